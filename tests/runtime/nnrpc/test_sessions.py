"""What kwasi's server and client add to NNRPC: sessions own handles and die with their client, unload /
finalize / load from bytes, deadlines on waits, and Generate streams that the guest cannot tell from one call
per token."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kwasi_runtime.backends.llm import LlmBackend
from kwasi_runtime.nn.abi import Errno, ExecutionTarget, GraphEncoding, NNError, TensorType
from kwasi_runtime.nn.backend_api import ExecutionContext, Tensor
from kwasi_runtime.nn.host import NNHost
from kwasi_runtime.nnrpc import wire
from kwasi_runtime.nnrpc.client.connection import Session
from kwasi_runtime.nnrpc.client.remote import RemoteContext, RemoteGraph, RemoteModels
from kwasi_runtime.nnrpc.server.app import NNRpcServer
from kwasi_testing.nnrpc import client_host, preload_host, quiet_env, raw_unary, rpc_server

GREEDY = json.dumps({"temp": 0}).encode()


def u8(data: bytes) -> Tensor:
    return Tensor((1,), TensorType.U8, data)


def context(host: NNHost, name: str = "default", config: bytes | None = GREEDY) -> ExecutionContext:
    model = host.models.get(name)
    assert model is not None
    return model.graph(config).init_execution_context()


def stream(ctx: ExecutionContext, limit: int = 400, pause_s: float = 0.0) -> tuple[bytes, Errno]:
    """Every piece until the errno that ends the stream; `pause_s` of guest work between tokens."""
    out = b""
    for _ in range(limit):
        try:
            ctx.compute_single()
        except NNError as e:
            return out, e.errno
        out += ctx.get_output_single(0)
        time.sleep(pause_s)
    raise AssertionError("no end of stream")


def kv_usage(server: NNRpcServer, name: str = "default") -> int:
    """Streams holding a KV slot of the named model."""
    model = server.models.get(name)
    assert model is not None
    usage = model.kv_cache_usage()
    assert usage is not None
    return usage.streams


def sample(server: NNRpcServer, name: str, **labels: str) -> float:
    value = server.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_one_client_cannot_touch_anothers_handles(server: NNRpcServer) -> None:
    a, b = client_host(server.config.uri), client_host(server.config.uri)
    ctx_a, ctx_b = context(a), context(b)
    assert isinstance(ctx_a, RemoteContext) and isinstance(ctx_b, RemoteContext)
    assert ctx_a.session is not None and ctx_b.session is not None and ctx_a.session.id != ctx_b.session.id
    assert ctx_a.handle == ctx_b.handle == 0  # each session numbers its own handles from 0
    ctx_a.set_input(0, u8(b"A"))
    ctx_a.compute_single()
    intruder = RemoteContext(ctx_b.conn, ctx_b.session, 1)  # a handle b's session never made
    with pytest.raises(NNError) as e:
        intruder.get_output_single(0)
    assert e.value.errno == Errno.INVALID_ARGUMENT
    forged = RemoteContext(ctx_b.conn, Session("not-a-session", (), 1), 0)
    with pytest.raises(NNError) as e:
        forged.get_output_single(0)
    assert e.value.errno == Errno.RUNTIME_ERROR and "unknown or ended session" in str(e.value)
    assert stream(ctx_a) == (b"orld", Errno.END_OF_SEQUENCE)  # a's generation was not disturbed
    for host in (a, b):
        host.models.close()


def test_unload_finalize_and_load_from_bytes(server: NNRpcServer, scripted_gguf: Path) -> None:
    host = client_host(server.config.uri)
    graph = host.backends.for_load(GraphEncoding.GGML).load([scripted_gguf.read_bytes(), GREEDY], ExecutionTarget.CPU)
    assert isinstance(graph, RemoteGraph) and graph.shared.session is not None
    session = server.sessions.get(graph.shared.session.id)
    assert session is not None
    ctx = graph.init_execution_context()
    ctx.set_input(0, u8(b"A"))
    ctx.compute_single()
    assert kv_usage(server) == 0  # bytes-loaded models are not the named model's slots
    assert stream(ctx) == (b"orld", Errno.END_OF_SEQUENCE)
    named = context(host)
    named.set_input(0, u8(b"A"))
    named.compute_single()
    assert kv_usage(server) == 1
    named.close()  # finalize_execution_context: the slot is back at once, not when the client goes
    assert kv_usage(server) == 0 and len(session.table.contexts) == 1
    ctx.close()
    graph.close()
    assert not session.table.contexts and len(session.table.graphs) == 1  # the named graph, still in use here
    host.models.close()


CLIENT = """
import sys, time
from kwasi_testing.nnrpc import client_host
from kwasi_runtime.nn.backend_api import Tensor
from kwasi_runtime.nn.abi import TensorType
ctx = client_host(sys.argv[1]).models.get("random").graph(b'{"ignore-eos": true}').init_execution_context()
ctx.set_input(0, Tensor((1,), TensorType.U8, b"hello"))
for _ in range(3):
    ctx.compute_single()
print("streaming", flush=True)
while True:
    ctx.compute_single()
"""


def test_a_client_killed_mid_stream_gives_its_slot_back(server: NNRpcServer) -> None:
    child = subprocess.Popen([sys.executable, "-c", CLIENT, server.config.uri], stdout=subprocess.PIPE, text=True,
                             env={**quiet_env(), "PYTHONPATH": str(Path(__file__).parents[2])})
    try:
        assert child.stdout is not None and child.stdout.readline() == "streaming\n"
        assert kv_usage(server, "random") == 1 and len(server.sessions) == 1
        child.kill()
        child.wait(10)
        deadline = time.monotonic() + 20
        while (kv_usage(server, "random") or len(server.sessions)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kv_usage(server, "random") == 0 and len(server.sessions) == 0
        assert sample(server, "kwasi_nnrpc_sessions") == 0
    finally:
        child.kill()
        child.wait(10)
    host = client_host(server.config.uri)  # and the server goes on serving
    ctx = context(host)
    ctx.set_input(0, u8(b"A"))
    assert stream(ctx) == (b"World", Errno.END_OF_SEQUENCE)
    host.models.close()


def test_a_frozen_client_is_dropped_by_keep_alive(tmp_path: Path, random_gguf: Path) -> None:
    """SIGSTOP: the connection stays open but nothing answers the server's pings; the slot must come back."""
    with rpc_server(preload_host(f"random:GGML:CPU:{random_gguf}"), f"unix://{tmp_path}/k.sock",
                    keepalive_s=0.5) as server:
        child = subprocess.Popen([sys.executable, "-c", CLIENT, server.config.uri], stdout=subprocess.PIPE,
                                 text=True, env={**quiet_env(), "PYTHONPATH": str(Path(__file__).parents[2])})
        try:
            assert child.stdout is not None and child.stdout.readline() == "streaming\n"
            child.send_signal(signal.SIGSTOP)
            deadline = time.monotonic() + 20
            while kv_usage(server, "random") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert kv_usage(server, "random") == 0 and len(server.sessions) == 0
        finally:
            child.kill()
            child.wait(10)


def busy_call(ctx: RemoteContext, timeout: float | None) -> tuple[grpc.RpcError, float]:
    """A plain ComputeSingle on `ctx` while its own stream holds it on the server."""
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        raw_unary(ctx.conn._channel, wire.COMPUTE_SINGLE.path)(
            wire.COMPUTE_SINGLE.request(resource_handle=ctx.handle).SerializeToString(), timeout=timeout,
            metadata=ctx.conn.metadata(ctx.session))
    return e.value, time.monotonic() - started


def test_a_wait_for_a_busy_context_ends_at_the_deadline(tmp_path: Path, scripted_gguf: Path) -> None:
    with rpc_server(preload_host(f"default:GGML:CPU:{scripted_gguf}"), f"unix://{tmp_path}/t.sock",
                    call_timeout_s=0.3) as server:
        host = client_host(server.config.uri)
        ctx = context(host)
        assert isinstance(ctx, RemoteContext)
        ctx.set_input(0, u8(b"A"))
        ctx.compute_single()  # a Generate stream now holds the context on the server
        error, took = busy_call(ctx, timeout=0.5)  # the caller's deadline ...
        assert error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN) and took < 1.5
        error, took = busy_call(ctx, timeout=None)  # ... or, without one, the server's --call-timeout
        assert wire.errno_from_trailers(error.trailing_metadata()) == Errno.BUSY and took < 1.5
        assert stream(ctx) == (b"orld", Errno.END_OF_SEQUENCE)  # the stream itself went on unharmed
        host.models.close()


def test_the_client_streams_when_the_server_offers_it(server: NNRpcServer) -> None:
    for stream_mode in (True, False):
        host = client_host(server.config.uri, stream=stream_mode)
        before = {m: sample(server, "kwasi_nnrpc_calls_total", method=m) for m in ("Generate", "ComputeSingle")}
        ctx = context(host)
        ctx.set_input(0, u8(b"A"))
        assert stream(ctx) == (b"World", Errno.END_OF_SEQUENCE)
        after = {m: sample(server, "kwasi_nnrpc_calls_total", method=m) for m in before}
        calls = {m: after[m] - before[m] for m in before}
        assert calls == ({"Generate": 1, "ComputeSingle": 0} if stream_mode else {"Generate": 0, "ComputeSingle": 6})
        host.models.close()


def test_long_streams_move_to_fresh_calls_without_losing_a_token(server: NNRpcServer, random_gguf: Path) -> None:
    """Each Generate call lives at most half the call deadline; the steps made ahead survive the switch."""
    config = json.dumps({"temp": 0.9, "seed": 3, "ctx-size": 96, "ignore-eos": True}).encode()
    local_model = LlmBackend().preload([random_gguf], ExecutionTarget.CPU)
    local = local_model.graph(config).init_execution_context()
    host = client_host(server.config.uri, timeout_s=0.2, window=4)
    remote = context(host, "random", config)
    before = sample(server, "kwasi_nnrpc_calls_total", method="Generate")
    results = []
    for ctx in (local, remote):
        ctx.set_input(0, u8(b"once"))
        out, end = stream(ctx, pause_s=0.002)
        results.append((out, end, json.loads(ctx.get_output(1))["output_tokens"]))
    assert results[0] == results[1] and results[0][1] == Errno.CONTEXT_FULL
    assert sample(server, "kwasi_nnrpc_calls_total", method="Generate") - before >= 2
    host.models.close()


OPS = st.lists(st.sampled_from(["step", "step", "step", "step", "piece", "meta_single", "text", "meta",
                                "fini", "prompt"]), min_size=1, max_size=40)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, window=st.sampled_from([1, 2, 4]))
def test_a_streamed_context_answers_every_call_as_a_local_one(
        server: NNRpcServer, random_gguf: Path, ops: list[str], window: int) -> None:
    """Whatever the guest does between tokens, the steps the server made ahead of it never show."""
    config = json.dumps({"temp": 0.8, "seed": 11, "ctx-size": 48}).encode()
    local_model = LlmBackend().preload([random_gguf], ExecutionTarget.CPU)
    host = client_host(server.config.uri, window=window)
    models = host.models
    assert isinstance(models, RemoteModels)
    pair = [local_model.graph(config).init_execution_context(), context(host, "random", config)]
    prompts = iter([b"first prompt", b"second", b"third one", b"4", b"five", b"six"] * 10)
    try:
        for ctx in pair:
            ctx.set_input(0, u8(b"start"))
        for op in ops:
            prompt = next(prompts) if op == "prompt" else b""
            seen = [observe(ctx, op, prompt) for ctx in pair]
            assert seen[0] == seen[1], (op, ops)
    finally:
        for ctx in pair:
            ctx.close()
        models.close()


def observe(ctx: ExecutionContext, op: str, prompt: bytes) -> object:
    calls: dict[str, Callable[[], object]] = {
        "step": ctx.compute_single, "piece": lambda: ctx.get_output_single(0),
        "meta_single": lambda: ctx.get_output_single(1), "text": lambda: ctx.get_output(0),
        "meta": lambda: ctx.get_output(1), "fini": ctx.fini_single, "prompt": lambda: ctx.set_input(0, u8(prompt)),
    }
    try:
        return calls[op]()
    except NNError as e:
        return e.errno
