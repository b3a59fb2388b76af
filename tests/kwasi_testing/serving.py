"""Helpers for the serve tests: a scripted token model, a server on a background loop, tiny HTTP clients."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kwasi_runtime.nn.abi import Errno, NNError, TensorType
from kwasi_runtime.nn.backend_api import ContextModel, ExecutionContext, Graph, NamedModel, Tensor
from kwasi_runtime.serve.config import ServeConfig
from kwasi_runtime.serve.metrics import Metrics
from kwasi_runtime.serve.server import Server
from kwasi_testing.guests import built_guest
from kwasi_testing.models import host_with

# Whole characters per token, with multi-byte UTF-8 and JSON-hostile characters the guest must escape.
ANSWER = ["The", " capital", " of", " France", " is", " Paris", " —", " café", " \"🌍\"", "\n", "!"]


@dataclass
class ScriptedTokens(NamedModel):
    """A GGML-shaped token source: metadata JSON in, one piece per compute_single, END_OF_SEQUENCE after
    the script (counted as an output token, as the LLM backend does), usage in get_output(1)."""

    pieces: Sequence[str] = tuple(ANSWER)
    delay_s: float = 0.0
    endless: bool = False
    ctx_tokens: int = 1 << 20
    metadata: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[bytes] = field(default_factory=list)
    closed: int = 0
    live: int = 0

    def graph(self, config: bytes | None) -> Graph:
        return ContextModel(lambda: ScriptedContext(self))

    def context_length(self) -> int | None:
        return self.ctx_tokens


class ScriptedContext(ExecutionContext):
    def __init__(self, model: ScriptedTokens) -> None:
        self.model = model
        self.chat = False
        self.prompt = b""
        self.produced = 0
        self.last = b""
        model.live += 1

    def set_input(self, index: int, tensor: Tensor) -> None:
        assert tensor.type is TensorType.U8
        if index == 1:
            doc = json.loads(tensor.data)
            self.model.metadata.append(doc)
            self.chat = bool(doc.get("chat", self.chat))
            return
        if self.chat:
            messages = json.loads(tensor.data)
            if not isinstance(messages, list):
                raise NNError(Errno.INVALID_ARGUMENT, "chat prompt must be a JSON list")
        self.prompt = tensor.data
        self.model.prompts.append(tensor.data)
        self.produced = 0

    def prompt_tokens(self) -> int:
        return len(self.prompt.split())

    def compute(self) -> None:
        raise NNError(Errno.INVALID_ARGUMENT, "streaming only")

    def get_output(self, index: int) -> bytes:
        return json.dumps({"input_tokens": self.prompt_tokens(), "output_tokens": self.produced,
                           "llama_build_number": 0, "llama_commit": "scripted"}).encode()

    def compute_single(self) -> None:
        if self.prompt_tokens() > self.model.ctx_tokens:
            raise NNError(Errno.PROMPT_TOO_LONG)
        if self.model.delay_s:
            time.sleep(self.model.delay_s)
        self.produced += 1
        if self.model.endless:
            self.last = b"tok "
            return
        if self.produced > len(self.model.pieces):
            self.last = b""
            raise NNError(Errno.END_OF_SEQUENCE)
        self.last = self.model.pieces[self.produced - 1].encode()

    def get_output_single(self, index: int) -> bytes:
        return self.get_output(1) if index == 1 else self.last

    def fini_single(self) -> None:
        self.produced = 0

    def close(self) -> None:
        self.model.closed += 1
        self.model.live -= 1


class ServerThread:
    """A real server on 127.0.0.1 (ephemeral port), its event loop on a background thread."""

    def __init__(self, model: NamedModel | None = None, *, prepare: bool = True, wagi: bool = True,
                 **config: Any) -> None:
        settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "chat_module": built_guest("openai_chat"),
                                    "timeout_s": 10.0, "memory_bytes": 64 << 20}
        if wagi:
            settings["module"] = built_guest("wagi_echo")
        settings.update(config)
        self.model = model
        self.metrics = Metrics()
        host = host_with(default=model) if model is not None else host_with()
        self.server = Server(ServeConfig(**settings), host, self.metrics)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server-loop", daemon=True)
        self.thread.start()
        if prepare:
            self.server.prepare()
        self.port = self.call(self.server.start())
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace_s: float = 1.0) -> None:
        self.call(self.server.shutdown(grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Until every request has been fully accounted for (its guest thread included)."""
        deadline = time.monotonic() + timeout
        while (self.server.runner.jobs or self.server.inflight) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not self.server.runner.jobs and not self.server.inflight


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(url: str, method: str = "GET", path: str = "/", body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30.0) -> Reply:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def sse_events(body: bytes) -> Iterator[str]:
    for block in body.decode().split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            yield block[len("data: "):]
