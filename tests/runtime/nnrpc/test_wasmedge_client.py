"""A client compiled at test time from our wasi_ephemeral_nn.proto, speaking only WasmEdge's services as
WasmEdge's own client does (no session id, one call per token), against `nn-rpc-server`.

The first test follows WasmEdge's GGMLBackendWithRPC and GGMLBackendComputeSingleWithRPC (handles from 0, the
name cache shared by both loads, bad handles refused), then runs a whole generation to end of sequence.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest

from kwasi_runtime.nn.backend_api import NamedModel
from kwasi_runtime.nnrpc.server.app import NNRpcServer
from kwasi_runtime.nnrpc.server.security import Security, unix_path
from kwasi_testing.net import free_port
from kwasi_testing.nnrpc import generated_stubs, preload_host, raw_unary, rpc_server, wait_serving

U8 = 3  # WasmEdge puts its witx number for u8 in Tensor.ty (the enum's label for 3 is BF16)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, ModuleType]]:
    with generated_stubs(tmp_path_factory.mktemp("stubs")) as s:
        yield s


class WasmEdgeClient:
    def __init__(self, target: str, stubs: tuple[ModuleType, ModuleType]) -> None:
        self.pb, rpc = stubs
        # Its own connection, as a separate WasmEdge process would have (gRPC shares them within a process).
        self.channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        self.graph = rpc.GraphStub(self.channel)
        self.resource = rpc.GraphResourceStub(self.channel)
        self.ctx = rpc.GraphExecutionContextResourceStub(self.channel)

    def prompt(self, ctx: int, text: bytes) -> None:
        self.ctx.SetInput(self.pb.SetInputRequest(
            resource_handle=ctx, index=0, tensor=self.pb.Tensor(dimensions=[1], ty=U8, data=text)), timeout=30)

    def stream(self, ctx: int) -> tuple[bytes, int]:
        out = b""
        while True:
            try:
                self.ctx.ComputeSingle(self.pb.ComputeRequest(resource_handle=ctx), timeout=30)
            except grpc.RpcError as e:
                return out, errno(e)
            out += self.ctx.GetOutputSingle(self.pb.GetOutputRequest(resource_handle=ctx, index=0)).data


def errno(e: grpc.RpcError) -> int:
    assert e.code() == grpc.StatusCode.UNKNOWN, e  # WasmEdge's status for a failed host call
    found = [m.value for m in e.trailing_metadata() if m.key == "errno"]
    assert len(found) == 1, e.trailing_metadata()
    return int(found[0])


def fails(call: Any, *args: Any) -> int:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30)
    return errno(info.value)


def test_a_wasmedge_client_works_unchanged(server: NNRpcServer, stubs: tuple[ModuleType, ModuleType]) -> None:
    c = WasmEdgeClient(server.config.uri, stubs)
    pb = c.pb
    assert c.graph.LoadByName(pb.LoadByNameRequest(name="default")).graph_handle == 0
    assert c.graph.LoadByNameWithConfig(pb.LoadByNameWithConfigRequest(
        name="default", config='{"temp":0}')).graph_handle == 0
    assert fails(c.graph.LoadByName, pb.LoadByNameRequest(name="absent")) == 8  # NotFound
    assert fails(c.resource.InitExecutionContext, pb.InitExecutionContextRequest(resource_handle=2)) == 1
    assert c.resource.InitExecutionContext(pb.InitExecutionContextRequest(resource_handle=0)).ctx_handle == 0
    assert fails(c.ctx.SetInput, pb.SetInputRequest(resource_handle=3, index=0,
                                                    tensor=pb.Tensor(dimensions=[1], ty=U8, data=b"A"))) == 1
    c.prompt(0, b"A")
    meta = json.loads(c.ctx.GetOutput(pb.GetOutputRequest(resource_handle=0, index=1)).data)
    assert meta["input_tokens"] == 1 and meta["output_tokens"] == 0
    assert fails(c.ctx.ComputeSingle, pb.ComputeRequest(resource_handle=3)) == 1
    assert c.stream(0) == (b"World", 100)  # EndOfSequence in the errno trailer
    meta = json.loads(c.ctx.GetOutputSingle(pb.GetOutputRequest(resource_handle=0, index=1)).data)
    assert meta["output_tokens"] == len(b"World") + 1  # the end-of-generation token counts
    c.ctx.FiniSingle(pb.FiniSingleRequest(resource_handle=0))
    c.ctx.Compute(pb.ComputeRequest(resource_handle=0))
    assert c.ctx.GetOutput(pb.GetOutputRequest(resource_handle=0, index=0)).data == b"World"
    assert c.resource.InitExecutionContext(pb.InitExecutionContextRequest(resource_handle=0)).ctx_handle == 1


def test_wasmedge_clients_on_separate_connections_do_not_share_handles(
        tmp_path: Path, scripted_gguf: Path, stubs: tuple[ModuleType, ModuleType]) -> None:
    """Without a session id the peer address is the owner: two TCP connections, two handle spaces."""
    uri = f"127.0.0.1:{free_port()}"
    with rpc_server(preload_host(f"default:GGML:CPU:{scripted_gguf}"), uri,
                    security=Security(insecure=True), idle_session_s=0.2, max_concurrency=4) as server:
        a, b = WasmEdgeClient(uri, stubs), WasmEdgeClient(uri, stubs)
        pb = a.pb
        for c in (a, b):
            graph = c.graph.LoadByName(pb.LoadByNameRequest(name="default")).graph_handle
            init = pb.InitExecutionContextRequest(resource_handle=graph)
            assert c.resource.InitExecutionContext(init).ctx_handle == 0
        a.prompt(0, b"A")
        a.ctx.ComputeSingle(pb.ComputeRequest(resource_handle=0))  # a takes a KV slot
        assert b.ctx.GetOutputSingle(pb.GetOutputRequest(resource_handle=0, index=0)).data == b""  # b's own ctx 0
        assert fails(b.resource.InitExecutionContext, pb.InitExecutionContextRequest(resource_handle=1)) == 1
        model = server.models.get("default")
        assert model is not None and streams(model) == 1
        time.sleep(0.3)
        assert server.sessions.reap_idle() == 2  # clients that never say goodbye are freed when idle
        assert streams(model) == 0
        assert fails(a.ctx.ComputeSingle, pb.ComputeRequest(resource_handle=0)) == 1  # a fresh, empty session
        a.channel.close()
        b.channel.close()


def streams(model: NamedModel) -> int:
    usage = model.kv_cache_usage()
    assert usage is not None
    return usage.streams


def raw_call(target: str, path: str, payload: bytes) -> grpc.RpcError | bytes:
    with grpc.insecure_channel(target) as channel:
        try:
            return raw_unary(channel, path)(payload, timeout=10)
        except grpc.RpcError as e:
            return e


def test_malformed_and_non_utf8_requests_are_invalid_argument(server: NNRpcServer) -> None:
    uri = server.config.uri
    non_utf8_name = b"\x0a\x03\xff\xfe\xfd"  # LoadByNameRequest.name = 3 bytes that are not UTF-8
    for path, payload in (("/wasi_ephemeral_nn.Graph/LoadByName", non_utf8_name),
                          ("/wasi_ephemeral_nn.Graph/LoadByNameWithConfig", b"\x12\x01\x80"),
                          ("/wasi_ephemeral_nn.GraphExecutionContextResource/SetInput", b"\xff\xff\xff\xff"),
                          ("/kwasi.nnrpc.v1.Lifecycle/Load", b"\x0a\x10short")):
        e = raw_call(uri, path, payload)
        assert isinstance(e, grpc.RpcError) and errno(e) == 1, (path, e)
    e = raw_call(uri, "/wasi_ephemeral_nn.Graph/Load", b"")
    assert isinstance(e, grpc.RpcError) and e.code() == grpc.StatusCode.UNIMPLEMENTED


def test_garbage_on_the_socket_and_oversized_messages_leave_the_server_serving(
        tmp_path: Path, scripted_gguf: Path, stubs: tuple[ModuleType, ModuleType]) -> None:
    uri = f"unix://{tmp_path}/small.sock"
    with rpc_server(preload_host(f"default:GGML:CPU:{scripted_gguf}"), uri, max_message_bytes=1 << 20):
        for garbage in (b"\x00" * 64, b"GET / HTTP/1.1\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 500):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(unix_path(uri)))
                sock.sendall(garbage)
                sock.settimeout(5)
                try:
                    while sock.recv(4096):
                        pass  # until the server closes the connection
                except TimeoutError:
                    pass
        c = WasmEdgeClient(uri, stubs)
        with pytest.raises(grpc.RpcError) as info:
            c.prompt(0, b"x" * (2 << 20))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        wait_serving(uri, timeout=5)
        graph = c.graph.LoadByName(c.pb.LoadByNameRequest(name="default")).graph_handle
        ctx = c.resource.InitExecutionContext(c.pb.InitExecutionContextRequest(resource_handle=graph)).ctx_handle
        c.prompt(ctx, b"A")
        assert c.stream(ctx) == (b"World", 100)
        c.channel.close()
