"""Admission, disconnects and shutdown: the limits a pod relies on."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from kwasi_testing.guests import ROOT, built_guest
from kwasi_testing.net import free_port
from kwasi_testing.serving import ScriptedTokens, ServerThread, request

CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_disconnect_mid_stream_cancels_the_guest_and_frees_its_context() -> None:
    model = ScriptedTokens(endless=True, delay_s=0.02)
    s = ServerThread(model)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(CHAT),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        seen = 0
        while seen < 5:  # the role chunk and four tokens
            seen += resp.readline().startswith(b"data: ")
        assert model.live == 1
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        wait_for(lambda: model.closed == 1)  # the guest stopped at its next WASI-NN call; the context is gone
        s.wait_idle()
        labels = {"model": "default", "module": "openai_chat"}
        assert s.sample("kwasi_requests_total", **labels, status="499", finish_reason="abort") == 1
        assert s.sample("kwasi_requests_running", **labels) == 0
        assert s.sample("kwasi_guest_traps_total", **labels, reason="error") == 0  # a cancel is not a trap
        assert s.server.runner.admission.running == 0
        assert model.live == 0
    finally:
        s.stop()


def test_clients_resetting_fast_streams_are_aborts_not_server_errors(caplog: pytest.LogCaptureFixture) -> None:
    """A reset can reach a write before aiohttp sees the connection go: still a 499, no 500 traceback (logged
    once per abort, such tracebacks filled the stderr pipe of a busy server)."""
    model = ScriptedTokens(endless=True)  # no delay: the guest writes while the client leaves
    s = ServerThread(model)
    caplog.set_level(logging.INFO)
    n = 30
    try:
        for _ in range(n):
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            conn.request("POST", "/v1/chat/completions", body=json.dumps(CHAT),
                         headers={"Content-Type": "application/json"})
            assert conn.getresponse().status == 200
            assert conn.sock is not None
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            conn.close()
        s.wait_idle()
        labels = {"model": "default", "module": "openai_chat"}
        wait_for(lambda: s.sample("kwasi_requests_total", **labels, status="499", finish_reason="abort") == n)
        assert s.server.runner.admission.running == 0
        assert model.live == 0
    finally:
        s.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_queue_beyond_concurrency_and_429_beyond_the_queue() -> None:
    s = ServerThread(ScriptedTokens(delay_s=0.04), max_concurrency=1, max_queue=1)
    try:
        results: dict[str, int] = {}

        def post(name: str) -> None:
            results[name] = request(s.url, "POST", "/v1/chat/completions", body=json.dumps(CHAT).encode()).status

        first = threading.Thread(target=post, args=("first",))
        first.start()
        wait_for(lambda: s.server.runner.admission.running == 1)
        second = threading.Thread(target=post, args=("second",))
        second.start()
        wait_for(lambda: s.server.runner.admission.waiting == 1)
        assert s.sample("kwasi_requests_waiting", model="default", module="openai_chat") == 1
        third = request(s.url, "POST", "/v1/chat/completions", body=json.dumps(CHAT).encode())
        assert third.status == 429
        assert third.json()["error"]["message"].startswith("server busy")
        first.join(10)
        second.join(10)
        assert results == {"first": 200, "second": 200}
        s.wait_idle()
        labels = {"model": "default", "module": "openai_chat"}
        assert s.sample("kwasi_request_queue_time_seconds_count", **labels) == 2
        # The second waited for the whole first stream (12 tokens x 40 ms).
        assert s.sample("kwasi_request_queue_time_seconds_sum", **labels) > 0.3
        assert s.sample("kwasi_requests_total", **labels, status="429", finish_reason="abort") == 1
    finally:
        s.stop()


@pytest.mark.parametrize("grace", [10.0, 0.3])
def test_sigterm_drains_in_flight_streams_then_exits_0(grace: float) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kwasi_runtime.cli", "serve", "--module", str(built_guest("wagi_echo")),
         "--host", "127.0.0.1", "--port", str(port), "--grace-period", str(grace), "--no-cache"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _ready(port), timeout=60)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/s?mode=stream&n=8&ms=100")
        resp = conn.getresponse()
        assert resp.readline() == b"chunk 0\n"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):  # no longer accepting
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        rest = resp.read() if grace > 1 else b""
        assert proc.wait(timeout=20) == 0
        if grace > 1:  # the stream finished inside the grace period
            assert rest == b"".join(b"chunk %d\n" % i for i in range(1, 8))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ready(port: int) -> bool:
    try:
        return bool(request(f"http://127.0.0.1:{port}", path="/readyz", timeout=2).status == 200)
    except OSError:
        return False


def test_api_key_from_the_environment() -> None:
    """The operator sets KWASI_API_KEY from a Secret; probes and /metrics stay open."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime"), "KWASI_API_KEY": "from-secret"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kwasi_runtime.cli", "serve", "--module", str(built_guest("wagi_echo")),
         "--host", "127.0.0.1", "--port", str(port), "--no-cache"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _ready(port), timeout=60)
        url = f"http://127.0.0.1:{port}"
        assert request(url, path="/metrics").status == 200
        assert request(url, path="/hello").status == 401
        assert request(url, path="/v1/models").json()["error"]["code"] == "invalid_api_key"
        assert request(url, path="/hello", headers={"Authorization": "Bearer from-secret"}).status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
