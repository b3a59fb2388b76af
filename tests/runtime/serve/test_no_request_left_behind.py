"""No request left behind: a request queued behind a long prefill is answered, the --timeout deadline fires even
while the guest is blocked inside a host call, and clients that leave during a prefill free their slots at once."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kwasi_runtime.backends.llm import LlmBackend
from kwasi_runtime.nn.abi import ExecutionTarget
from kwasi_runtime.nn.backend_api import NamedModel
from kwasi_runtime.nn.models import ConfiguredModel
from kwasi_testing.gguf_models import random_llama_file
from kwasi_testing.models import slow_prefill
from kwasi_testing.serving import ScriptedContext, ScriptedTokens, ServerThread, request

CHUNK_DELAY_S = 0.02
LABELS = {"model": "default", "module": "openai_chat"}


def held_slots(model: NamedModel) -> int:
    usage = model.kv_cache_usage()
    return usage.streams if usage is not None else 0


def chat(content: str, **extra: object) -> bytes:
    return json.dumps({"model": "default", "messages": [{"role": "user", "content": content}],
                       "temperature": 0, **extra}).encode()


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_llama_file(tmp_path_factory, seed=11)


@pytest.fixture
def slow_llm(tiny_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:
    """The tiny LLM with prefill chunks of 8 tokens that take 20 ms each."""
    slow_prefill(monkeypatch, CHUNK_DELAY_S)
    model = ConfiguredModel(LlmBackend().preload([tiny_path], ExecutionTarget.CPU), {"batch-size": 8})
    s = ServerThread(model, wagi=False, timeout_s=20.0)
    yield s
    s.stop()


def test_a_short_request_behind_a_long_prefill_is_answered(slow_llm: ServerThread) -> None:
    replies: dict[str, int] = {}

    def post(name: str, body: bytes) -> None:
        replies[name] = request(slow_llm.url, "POST", "/v1/chat/completions", body=body, timeout=30).status

    long = threading.Thread(target=post, args=("long", chat("x" * 180, max_tokens=1)))
    long.start()
    deadline = time.monotonic() + 10
    while slow_llm.server.runner.admission.running < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.1)  # the long prompt is prefilling alone now
    started = time.monotonic()
    post("short", chat("hi", max_tokens=2))
    long.join(10)
    assert replies == {"long": 200, "short": 200}
    assert time.monotonic() - started < 10  # before the fix it waited for the 20 s deadline (or forever)
    slow_llm.wait_idle()
    assert slow_llm.sample("kwasi_requests_running", **LABELS) == 0


def test_clients_leaving_during_prefill_free_their_slots_at_once(slow_llm: ServerThread) -> None:
    conns = []
    for _ in range(4):
        conn = http.client.HTTPConnection("127.0.0.1", slow_llm.port, timeout=10)
        conn.request("POST", "/v1/chat/completions", body=chat("y" * 180, stream=True),
                     headers={"Content-Type": "application/json"})
        conns.append(conn)
    deadline = time.monotonic() + 10
    while slow_llm.server.runner.admission.running < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.1)  # one prompt prefills, three wait their turn: 4 x 0.5 s of prefill in all
    model = slow_llm.server.host.models.get("default")
    assert model is not None
    assert held_slots(model) > 0
    left = time.monotonic()
    for conn in conns:
        assert conn.sock is not None
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
    while (slow_llm.server.runner.admission.running or held_slots(model) > 0) \
            and time.monotonic() - left < 5:
        time.sleep(0.005)
    freed_after = time.monotonic() - left
    assert slow_llm.server.runner.admission.running == 0
    assert held_slots(model) == 0
    assert freed_after < 0.5, f"slots were held {freed_after:.2f} s after the clients left"
    slow_llm.wait_idle()
    assert slow_llm.sample("kwasi_requests_total", **LABELS, status="499", finish_reason="abort") == 4


class BlockedInHostCall(ScriptedTokens):
    """compute_single never returns until released: a backend stuck inside a host call."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def graph(self, config: bytes | None) -> object:  # type: ignore[override]
        from kwasi_runtime.nn.backend_api import ContextModel

        return ContextModel(lambda: Blocking(self))


class Blocking(ScriptedContext):
    def compute_single(self) -> None:
        assert isinstance(self.model, BlockedInHostCall)
        self.model.release.wait(60)
        super().compute_single()


@pytest.mark.parametrize("stream", [False, True])
def test_timeout_answers_while_the_guest_is_blocked_in_a_host_call(stream: bool) -> None:
    model = BlockedInHostCall()
    s = ServerThread(model, timeout_s=1.0)
    try:
        started = time.monotonic()
        reply = request(s.url, "POST", "/v1/chat/completions", body=chat("hi", stream=stream), timeout=30)
        waited = time.monotonic() - started
        assert reply.status == 504
        assert reply.json()["error"]["type"] == "server_error"
        assert waited < 5, f"the 1 s deadline answered after {waited:.1f} s"
        model.release.set()
        s.wait_idle()
        assert s.sample("kwasi_requests_total", **LABELS, status="504", finish_reason="error") == 1
        assert s.server.runner.admission.running == 0
    finally:
        model.release.set()
        s.stop()


def test_timeout_covers_the_time_in_the_queue() -> None:
    model = BlockedInHostCall()
    s = ServerThread(model, timeout_s=1.0, max_concurrency=1)
    try:
        def blocked_first() -> None:
            # Past its own deadline once released: a 504, or headers then an aborted body; either is fine here.
            with contextlib.suppress(http.client.HTTPException):
                request(s.url, "POST", "/v1/chat/completions", chat("a"))

        first = threading.Thread(target=blocked_first)
        first.start()
        while s.server.runner.admission.running < 1:
            time.sleep(0.005)
        started = time.monotonic()
        reply = request(s.url, "POST", "/v1/chat/completions", body=chat("b"), timeout=30)
        assert reply.status == 504 and time.monotonic() - started < 3
        model.release.set()
        first.join(10)
        s.wait_idle()
    finally:
        model.release.set()
        s.stop()
