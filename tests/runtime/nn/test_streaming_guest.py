"""The streaming C guest (llm_stream.c) against the host's WasmEdge streaming path.

The backend here is a scripted token source: it exercises the host's side of compute_single,
get_output_single, get_output(1) and fini_single with exact, checkable bytes. The real LLM backend
has its own tests.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from kwasi_runtime.nn.abi import Errno, NNError, TensorType
from kwasi_runtime.nn.backend_api import ExecutionContext, Graph, NamedModel, Tensor
from kwasi_runtime.sandbox import Limits, Sandbox, WasiSetup
from kwasi_testing.guests import built_guest
from kwasi_testing.models import host_with

TEXT = "Paris — café 🌍!"
# Split inside multi-byte characters, as a byte-level tokenizer does.
PIECES = [b"Par", b"is \xe2\x80", b"\x94 caf\xc3", b"\xa9 \xf0\x9f", b"\x8c\x8d!"]


class ScriptedContext(ExecutionContext):
    def __init__(self, graph: ScriptedGraph) -> None:
        self.graph = graph
        self.prompt = b""
        self.out: list[bytes] = []
        self.fresh = True

    def set_input(self, index: int, tensor: Tensor) -> None:
        if index == 1:
            json.loads(tensor.data)
            return
        assert tensor.type is TensorType.U8
        self.prompt = tensor.data
        self.out, self.fresh = [], True

    def metadata(self) -> bytes:
        return json.dumps({"input_tokens": len(self.prompt.split()), "output_tokens": len(self.out),
                           "llama_build_number": 1, "llama_commit": "scripted"}).encode()

    def compute(self) -> None:
        self.out = list(PIECES)

    def get_output(self, index: int) -> bytes:
        return self.metadata() if index == 1 else b"".join(self.out)

    def compute_single(self) -> None:
        if len(self.prompt) > self.graph.ctx_size:
            raise NNError(Errno.PROMPT_TOO_LONG)
        if len(self.out) == self.graph.limit:
            raise NNError(Errno.CONTEXT_FULL)
        if len(self.out) == len(PIECES):
            raise NNError(Errno.END_OF_SEQUENCE)
        self.out.append(PIECES[len(self.out)])

    def get_output_single(self, index: int) -> bytes:
        return self.metadata() if index == 1 else (self.out[-1] if self.out else b"")

    def fini_single(self) -> None:
        self.graph.finis += 1
        self.out = []

    def close(self) -> None:
        self.graph.closed += 1


class EndlessContext(ScriptedContext):
    """A token every 20 ms, forever: only cancellation or the deadline ends it."""

    def compute_single(self) -> None:
        time.sleep(0.02)
        self.out.append(b"tok ")


class ScriptedGraph(Graph):
    def __init__(self, config: bytes | None) -> None:
        cfg = json.loads(config) if config else {}
        self.ctx_size = int(cfg.get("ctx-size", 1024))
        self.limit = int(cfg.get("n-ctx-limit", 1 << 30))
        self.endless = bool(cfg.get("endless", False))
        self.finis = 0
        self.closed = 0

    def init_execution_context(self) -> ExecutionContext:
        return EndlessContext(self) if self.endless else ScriptedContext(self)


class ScriptedModel(NamedModel):
    def __init__(self) -> None:
        self.graphs: list[ScriptedGraph] = []

    def graph(self, config: bytes | None) -> Graph:
        self.graphs.append(ScriptedGraph(config))
        return self.graphs[-1]


def run(args: list[str], model: ScriptedModel | None = None) -> tuple[int | None, bytes, str]:
    model = model or ScriptedModel()
    sandbox = Sandbox(built_guest("llm_stream"), host_with(default=model), cache_dir=None)
    out: list[bytes] = []
    err: list[bytes] = []
    result = sandbox.run(WasiSetup(args=["llm_stream", *args], stdout=out.append, stderr=err.append))
    return result.exit_code, b"".join(out), b"".join(err).decode()


def test_streams_every_byte_in_order() -> None:
    model = ScriptedModel()
    code, out, err = run(["default", "What is the capital of France?"], model)
    assert code == 0, err
    assert out.decode() == TEXT + "\n"
    assert f"[stop] code 100 after {len(PIECES)} tokens" in err
    before = json.loads(err.split("[metadata before] ")[1].splitlines()[0])
    after = json.loads(err.split("[metadata after] ")[1].splitlines()[0])
    assert before == {"input_tokens": 6, "output_tokens": 0, "llama_build_number": 1, "llama_commit": "scripted"}
    assert after["output_tokens"] == len(PIECES)
    assert model.graphs[0].finis == 1


def test_streamed_chunks_arrive_one_token_at_a_time() -> None:
    sandbox = Sandbox(built_guest("llm_stream"), host_with(default=ScriptedModel()), cache_dir=None)
    chunks: list[bytes] = []
    assert sandbox.run(WasiSetup(args=["g", "default", "hi"], stdout=chunks.append)).exit_code == 0
    assert chunks[: len(PIECES)] == PIECES  # fflush per token: one write each, partial UTF-8 intact


def test_config_reaches_the_backend_and_context_full_stops() -> None:
    code, out, err = run(["default", "hi", '{"ctx-size": 64, "n-ctx-limit": 2}'])
    assert code == 5
    assert out == b"".join(PIECES[:2]) + b"\n"
    assert "[stop] code 101 after 2 tokens" in err


def test_prompt_too_long() -> None:
    code, _, err = run(["default", "x" * 100, '{"ctx-size": 16}'])
    assert code == 4
    assert "[stop] code 102 after 0 tokens" in err


@pytest.mark.parametrize("name", ["nope", "défault"])
def test_unknown_model_name(name: str) -> None:
    code, _, err = run([name, "hi"])
    assert code == 1
    assert "load_by_name_with_config failed: 8" in err


@pytest.mark.parametrize("fast", [True, False], ids=["raw", "public"])
def test_cancel_stops_the_stream_and_frees_the_context(fast: bool) -> None:
    model = ScriptedModel()
    sandbox = Sandbox(built_guest("llm_stream"), host_with(default=model), cache_dir=None, fast_calls=fast)
    cancel = threading.Event()
    chunks: list[bytes] = []

    def on_chunk(data: bytes) -> None:
        chunks.append(data)
        if len(chunks) == 3:
            cancel.set()

    start = time.monotonic()
    result = sandbox.run(WasiSetup(args=["g", "default", "hi", '{"endless": true}'], stdout=on_chunk),
                         Limits(timeout_s=30), cancel=cancel)
    assert time.monotonic() - start < 5
    assert result.cancelled and result.exit_code is None
    assert result.trap is not None and "cancelled" in result.trap
    assert 3 <= len(chunks) <= 4  # at most the token in flight when the flag was set
    assert model.graphs[0].closed == 1  # the context (and any KV slot it held) was freed
