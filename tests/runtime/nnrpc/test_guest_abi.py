"""The wasi_ephemeral_nn ABI through --nn-rpc-uri: every errno case of the local host's table
(tests/runtime/nn/test_host_abi.py) gives the guest the same errno when the model is on an NNRPC server, guest
pointers are checked here before any call, and outputs have no size cap (TooLarge reports the size needed)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from runtime.nn.test_host_abi import ERRNO_CASES, OUT, Scene, build_scene, torch_host

from kwasi_runtime.nn.abi import Errno, GraphEncoding
from kwasi_runtime.nnrpc.server.app import NNRpcServer
from kwasi_testing.guests import Proxy
from kwasi_testing.models import TinyModel
from kwasi_testing.nnrpc import client_host, rpc_server

BIG = 100_000  # float32 outputs: 400,000 bytes, six times the 64 KiB WasmEdge's released server could return


class Big(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.arange(100_000, dtype=torch.float32) + x.sum()  # BIG: TorchScript sees no globals


@pytest.fixture(scope="module")
def torch_server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NNRpcServer]:
    uri = f"unix://{tmp_path_factory.mktemp('abi')}/nn.sock"
    with rpc_server(torch_host(tiny_model.path), uri) as server:
        yield server


@pytest.fixture
def remote_scene(proxy_factory: Callable[..., Proxy], tiny_model: TinyModel, torch_server: NNRpcServer) -> Scene:
    return build_scene(proxy_factory(client_host(torch_server.config.uri)), tiny_model)


def calls(server: NNRpcServer) -> float:
    return sum(s.value for f in server.rpc_metrics.calls.collect() for s in f.samples if s.name.endswith("_total"))


@pytest.mark.parametrize(("call", "errno"), [c[1:] for c in ERRNO_CASES], ids=[c[0] for c in ERRNO_CASES])
def test_every_errno_is_the_local_one(remote_scene: Scene, call: Callable[[Scene], int], errno: Errno) -> None:
    assert call(remote_scene) == errno


@pytest.mark.parametrize("case", ["load-graph-out-past-memory", "name-not-utf8", "name-pointer-above-2GiB",
                                  "input-struct-past-memory", "input-data-past-memory", "output-written-past-memory",
                                  "output-buffer-past-memory", "unload-unknown-graph"])
def test_bad_guest_pointers_never_reach_the_server(remote_scene: Scene, torch_server: NNRpcServer,
                                                   case: str) -> None:
    call, errno = next(c[1:] for c in ERRNO_CASES if c[0] == case)
    before = calls(torch_server)
    assert call(remote_scene) == errno
    assert calls(torch_server) == before


def test_outputs_have_no_size_cap(proxy_factory: Callable[..., Proxy], torch_server: NNRpcServer,
                                  tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    torch.jit.script(Big()).save(str(path))  # type: ignore[no-untyped-call]
    p = proxy_factory(client_host(torch_server.config.uri))
    model = path.read_bytes()
    builders = p.alloc(struct.pack("<II", p.alloc(model), len(model)))
    assert p.call("load", builders, 1, GraphEncoding.PYTORCH, 0, OUT) == Errno.SUCCESS  # load from bytes
    graph = p.u32(OUT)
    assert p.call("init_execution_context", graph, OUT) == Errno.SUCCESS
    ctx = p.u32(OUT)
    assert p.call("set_input", ctx, 0, p.tensor((1,), 1, struct.pack("<f", 0.5))) == Errno.SUCCESS
    assert p.call("compute", ctx) == Errno.SUCCESS
    small = p.alloc(64)
    assert p.call("get_output", ctx, 0, small, 64, OUT) == Errno.TOO_LARGE
    assert p.u32(OUT) == 4 * BIG  # the size needed, not a truncation
    buf = p.alloc(4 * BIG)
    assert p.call("get_output", ctx, 0, buf, 4 * BIG, OUT) == Errno.SUCCESS and p.u32(OUT) == 4 * BIG
    assert struct.unpack_from("<3f", p.read(buf + 4 * (BIG - 3), 12)) == (BIG - 2.5, BIG - 1.5, BIG - 0.5)
    assert p.call("finalize_execution_context", ctx) == Errno.SUCCESS and p.call("unload", graph) == Errno.SUCCESS
