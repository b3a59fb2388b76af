"""The wasi_ephemeral_nn ABI as a guest sees it: handles, tensor structs, type numberings, every errno.

The proxy guest (tests/guests/proxy.wat) forwards raw i32 arguments, so these tests reach the host
functions exactly as a compiled guest does, through both the raw and the public wasmtime paths.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kwasi_runtime.abi import Errno, ExecutionTarget, GraphEncoding, TensorTypeNumbering
from kwasi_runtime.backends import BackendOptions, Backends
from kwasi_runtime.backends.torchscript import TorchScriptBackend
from kwasi_runtime.named_models import NamedModels
from kwasi_runtime.sandbox import Sandbox, WasiSetup
from kwasi_runtime.wasi_nn import HostOptions, NNHost
from kwasi_testing import Proxy, TinyModel, host_with, wat_guest

ProxyFactory = Callable[..., Proxy]
OUT = 0x8000  # scratch area for out-params, far from the proxy's heap


class Echo(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a, b * 2


@pytest.fixture(scope="module")
def echo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("echo") / "echo.pt"
    torch.jit.script(Echo()).save(str(path))  # type: ignore[no-untyped-call]
    return path


def torch_host(path: Path, options: HostOptions | None = None, output_f32: bool = False) -> NNHost:
    backends = Backends(BackendOptions(torch_output_f32=output_f32))
    models = NamedModels()
    models.register("m", TorchScriptBackend(output_f32=output_f32).preload([path], ExecutionTarget.CPU))
    return NNHost(models, backends, options)


def load_named(p: Proxy, name: bytes = b"m") -> int:
    name_ptr = p.alloc(name)
    assert p.call("load_by_name", name_ptr, len(name), OUT) == Errno.SUCCESS
    return p.u32(OUT)


def new_context(p: Proxy, graph: int) -> int:
    assert p.call("init_execution_context", graph, OUT) == Errno.SUCCESS
    return p.u32(OUT)


@pytest.mark.parametrize("fast", [True, False], ids=["raw", "public"])
def test_handles_start_at_zero_and_names_are_cached(proxy_factory: ProxyFactory, tiny_model: TinyModel,
                                                    fast: bool) -> None:
    p = proxy_factory(torch_host(tiny_model.path), fast=fast)
    assert load_named(p) == 0
    assert load_named(p) == 0  # cached per name, as WasmEdge does
    cfg = p.alloc(b'{"output-f32": true}')
    name = p.alloc(b"m")
    assert p.call("load_by_name_with_config", name, 1, cfg, 20, OUT) == 0
    assert p.u32(OUT) == 0  # a live name ignores the new config
    assert new_context(p, 0) == 0
    assert new_context(p, 0) == 1
    assert p.call("unload", 0) == 0
    assert p.call("unload", 0) == Errno.INVALID_ARGUMENT
    assert load_named(p) == 1  # evicted: rebuilt under a fresh handle
    # contexts of an unloaded graph keep working until finalized
    assert p.call("finalize_execution_context", 1) == 0
    assert p.call("finalize_execution_context", 1) == Errno.INVALID_ARGUMENT
    assert p.call("compute", 1) == Errno.INVALID_ARGUMENT


def test_load_from_builder_bytes(proxy_factory: ProxyFactory, tiny_model: TinyModel) -> None:
    p = proxy_factory(NNHost())
    blob = p.alloc(tiny_model.bytes)
    builders = p.alloc(struct.pack("<II", blob, len(tiny_model.bytes)))
    assert p.call("load", builders, 1, GraphEncoding.PYTORCH, ExecutionTarget.CPU, OUT) == 0
    assert p.u32(OUT) == 0
    assert p.call("load", builders, 1, GraphEncoding.PYTORCH, ExecutionTarget.AUTO, OUT) == 0
    assert p.u32(OUT) == 1
    x = tiny_model.input.numpy().tobytes()
    ctx = new_context(p, 1)
    assert p.call("set_input", ctx, 0, p.tensor((1, 3, 2, 2), 1, x)) == 0
    assert p.call("compute", ctx) == 0
    buf = p.alloc(64)
    assert p.call("get_output", ctx, 0, buf, 64, OUT) == 0
    assert p.u32(OUT) == 20
    with torch.no_grad():
        want = tiny_model.module(tiny_model.input)[0].tolist()
    assert struct.unpack("<5f", p.read(buf, 20)) == pytest.approx(want)


# (type, raw number in that numbering, torch dtype)
CASES = [
    (TensorTypeNumbering.WITX, 0, torch.float16),
    (TensorTypeNumbering.WITX, 1, torch.float32),
    (TensorTypeNumbering.WITX, 2, torch.float64),
    (TensorTypeNumbering.WITX, 3, torch.uint8),
    (TensorTypeNumbering.WITX, 4, torch.int32),
    (TensorTypeNumbering.WITX, 5, torch.int64),
    (TensorTypeNumbering.LEGACY, 2, torch.uint8),
    (TensorTypeNumbering.LEGACY, 3, torch.int32),
    (TensorTypeNumbering.WIT, 3, torch.bfloat16),
    (TensorTypeNumbering.WIT, 4, torch.uint8),
    (TensorTypeNumbering.WIT, 6, torch.int64),
]


@pytest.mark.parametrize(("numbering", "raw", "dtype"), CASES, ids=[f"{n.value}-{r}" for n, r, _ in CASES])
def test_tensor_types_round_trip_in_native_dtype(proxy_factory: ProxyFactory, echo_path: Path,
                                                 numbering: TensorTypeNumbering, raw: int,
                                                 dtype: torch.dtype) -> None:
    p = proxy_factory(torch_host(echo_path, HostOptions(tensor_types=numbering)))
    ctx = new_context(p, load_named(p))
    values = torch.arange(6).to(dtype).reshape(2, 3)
    data = values.contiguous().view(torch.uint8).numpy().tobytes()
    assert p.call("set_input", ctx, 0, p.tensor((2, 3), raw, data)) == 0
    assert p.call("set_input", ctx, 1, p.tensor((2, 3), raw, data)) == 0
    assert p.call("compute", ctx) == 0
    buf = p.alloc(256)
    assert p.call("get_output", ctx, 0, buf, 256, OUT) == 0
    assert p.read(buf, p.u32(OUT)) == data
    assert p.call("get_output", ctx, 1, buf, 256, OUT) == 0
    doubled = (values * 2).contiguous().view(torch.uint8).numpy().tobytes()
    assert p.read(buf, p.u32(OUT)) == doubled


def test_type_byte_is_only_offset_8(proxy_factory: ProxyFactory, echo_path: Path) -> None:
    """Rust crates write a 4-byte enum; bytes 9-11 must be ignored."""
    p = proxy_factory(torch_host(echo_path))
    ctx = new_context(p, load_named(p))
    data = struct.pack("<2f", 1.5, -2.0)
    dims = p.alloc(struct.pack("<I", 2))
    d = p.alloc(data)
    tensor = p.alloc(struct.pack("<IIIII", dims, 1, 0xABCDEF01, d, len(data)))  # low byte 1 = f32
    assert p.call("set_input", ctx, 0, tensor) == 0


def test_output_f32_option_converts(proxy_factory: ProxyFactory, echo_path: Path) -> None:
    p = proxy_factory(torch_host(echo_path, output_f32=True))
    ctx = new_context(p, load_named(p))
    data = struct.pack("<3i", 1, -2, 3)
    for i in (0, 1):
        assert p.call("set_input", ctx, i, p.tensor((3,), 4, data)) == 0
    assert p.call("compute", ctx) == 0
    buf = p.alloc(64)
    assert p.call("get_output", ctx, 0, buf, 64, OUT) == 0
    assert struct.unpack("<3f", p.read(buf, p.u32(OUT))) == (1.0, -2.0, 3.0)


def test_short_buffer_strict_and_compat(proxy_factory: ProxyFactory, tiny_model: TinyModel) -> None:
    x = tiny_model.input.numpy().tobytes()
    for compat in (False, True):
        p = proxy_factory(torch_host(tiny_model.path, HostOptions(wasmedge_compat=compat)))
        ctx = new_context(p, load_named(p))
        assert p.call("set_input", ctx, 0, p.tensor((1, 3, 2, 2), 1, x)) == 0
        assert p.call("compute", ctx) == 0
        buf = p.alloc(64)
        rc = p.call("get_output", ctx, 0, buf, 0, OUT)  # LlamaEdge passes a zero-length buffer
        assert p.u32(OUT) == 20
        if compat:
            assert rc == Errno.SUCCESS
            assert len(p.read(buf, 20).rstrip(b"\0")) > 0
        else:
            assert rc == Errno.TOO_LARGE
            assert p.read(buf, 20) == b"\0" * 20  # nothing copied
        # compat still refuses to write past linear memory
        end = p.size() - 8
        rc = p.call("get_output", ctx, 0, end, 0, OUT)
        assert rc == Errno.TOO_LARGE


def test_errno_paths(proxy_factory: ProxyFactory, tiny_model: TinyModel, echo_path: Path) -> None:
    p = proxy_factory(torch_host(tiny_model.path))
    size = p.size()
    blob = p.alloc(tiny_model.bytes)
    one = p.alloc(struct.pack("<II", blob, len(tiny_model.bytes)))
    two = p.alloc(struct.pack("<IIII", blob, len(tiny_model.bytes), blob, 4))
    E = Errno
    assert p.call("load", one, 1, 99, 0, OUT) == E.INVALID_ENCODING
    assert p.call("load", one, 1, GraphEncoding.OPENVINO, 0, OUT) == E.INVALID_ENCODING
    assert p.call("load", one, 1, GraphEncoding.PYTORCH, 7, OUT) == E.INVALID_ARGUMENT
    assert p.call("load", two, 2, GraphEncoding.PYTORCH, 0, OUT) == E.INVALID_ARGUMENT
    assert p.call("load", one, 1, GraphEncoding.PYTORCH, 0, size) == E.INVALID_ARGUMENT
    assert p.call("load", size - 4, 1, GraphEncoding.PYTORCH, 0, OUT) == E.INVALID_ARGUMENT
    assert p.call("load", one, 0x7FFFFFFF, GraphEncoding.PYTORCH, 0, OUT) == E.INVALID_ARGUMENT

    bad_utf8 = p.alloc(b"\xff\xfe")
    assert p.call("load_by_name", bad_utf8, 2, OUT) == E.INVALID_ARGUMENT
    missing = p.alloc(b"missing")
    assert p.call("load_by_name", missing, 7, OUT) == E.NOT_FOUND
    assert p.call("load_by_name", -16, 7, OUT) == E.INVALID_ARGUMENT  # pointer >= 2 GiB
    assert p.call("load_by_name_with_config", missing, 7, size, 1, OUT) == E.INVALID_ARGUMENT

    graph = load_named(p)
    assert p.call("init_execution_context", 42, OUT) == E.INVALID_ARGUMENT
    assert p.call("init_execution_context", graph, size) == E.INVALID_ARGUMENT
    ctx = new_context(p, graph)

    assert p.call("compute", ctx) == E.INVALID_ARGUMENT  # nothing set
    assert p.call("get_output", ctx, 0, OUT + 8, 64, OUT) == E.INVALID_ARGUMENT  # nothing computed
    x = tiny_model.input.numpy().tobytes()
    assert p.call("set_input", 42, 0, p.tensor((1, 3, 2, 2), 1, x)) == E.INVALID_ARGUMENT
    assert p.call("set_input", ctx, 0, size - 10) == E.INVALID_ARGUMENT
    assert p.call("set_input", ctx, 0, p.tensor((1, 3, 2, 2), 9, x)) == E.INVALID_ARGUMENT
    assert p.call("set_input", ctx, 0, p.tensor((1, 3, 2, 2), 1, x[:-4])) == E.INVALID_ARGUMENT
    assert p.call("set_input", ctx, 0, p.alloc(struct.pack("<IIB3xII", size, 4, 1, OUT, 48))) == E.INVALID_ARGUMENT
    dims = p.alloc(struct.pack("<4I", 1, 3, 2, 2))
    assert p.call("set_input", ctx, 0, p.alloc(struct.pack("<IIB3xII", dims, 4, 1, size - 8, 48))) \
        == E.INVALID_ARGUMENT
    assert p.call("set_input", ctx, 1, p.tensor((1,), 1, b"\0\0\0\0")) == 0
    assert p.call("compute", ctx) == E.INVALID_ARGUMENT  # input 0 missing
    assert p.call("set_input", ctx, 0, p.tensor((1, 2), 1, b"\0" * 8)) == 0
    assert p.call("compute", ctx) == E.RUNTIME_ERROR  # forward() rejects 2 args / shape

    ctx2 = new_context(p, graph)
    assert p.call("set_input", ctx2, 0, p.tensor((1, 3, 2, 2), 1, x)) == 0
    assert p.call("compute", ctx2) == 0
    buf = p.alloc(64)
    assert p.call("get_output", ctx2, 3, buf, 64, OUT) == E.INVALID_ARGUMENT
    assert p.call("get_output", ctx2, 0, buf, 64, size) == E.INVALID_ARGUMENT
    assert p.call("get_output", ctx2, 0, size - 4, 64, OUT) == E.INVALID_ARGUMENT
    assert p.call("get_output", ctx2, 0, buf, 8, OUT) == E.TOO_LARGE
    assert p.u32(OUT) == 20

    for fn in ("compute_single", "fini_single"):
        assert p.call(fn, ctx2) == E.INVALID_ARGUMENT  # not an LLM backend, as WasmEdge answers
    assert p.call("get_output_single", ctx2, 0, buf, 64, OUT) == E.INVALID_ARGUMENT
    assert p.call("compute", 99) == E.INVALID_ARGUMENT
    assert p.call("unload", 99) == E.INVALID_ARGUMENT
    assert p.call("finalize_execution_context", 99) == E.INVALID_ARGUMENT


def test_missing_memory_export_is_errno_3() -> None:
    sandbox = Sandbox(wat_guest("no_memory"), NNHost(), cache_dir=None)
    result = sandbox.run(WasiSetup())
    assert result.exit_code == 0, result.trap


def test_guest_memory_growth_is_seen(proxy_factory: ProxyFactory, tiny_model: TinyModel) -> None:
    p = proxy_factory(host_with())
    old = p.size()
    name = p.alloc(b"x")
    assert p.call("load_by_name", name, 1, OUT) == Errno.NOT_FOUND
    assert p.call("load_by_name", old + 16, 1, OUT) == Errno.INVALID_ARGUMENT
    p.memory.grow(p.inst.store, 1)
    p.memory.write(p.inst.store, b"x", old + 16)
    assert p.call("load_by_name", old + 16, 1, OUT) == Errno.NOT_FOUND  # in bounds now
