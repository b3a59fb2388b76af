"""The wasi_ephemeral_nn ABI as a guest sees it: handles, tensor structs, type numberings, every errno.

The proxy guest (tests/runtime/guests/proxy.wat) forwards raw i32 arguments, so these tests reach the host
functions exactly as a compiled guest does, through both the raw and the public wasmtime paths.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kwasi_runtime.backends.registry import BackendOptions, Backends
from kwasi_runtime.backends.torchscript import TorchScriptBackend
from kwasi_runtime.nn.abi import Errno, ExecutionTarget, GraphEncoding, TensorTypeNumbering
from kwasi_runtime.nn.host import HostOptions, NNHost
from kwasi_runtime.nn.models import NamedModels
from kwasi_runtime.sandbox import Sandbox, WasiSetup
from kwasi_testing.guests import Proxy, wat_guest
from kwasi_testing.models import TinyModel, host_with

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
    p = proxy_factory(NNHost(backends=Backends()))
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


@dataclass
class Scene:
    """A proxy with the tiny model loaded by name, a fresh context and a computed one, and scratch buffers."""

    p: Proxy
    size: int  # first byte past linear memory
    one: int  # a builder array holding the model
    two: int  # two builders (TorchScript takes one)
    graph: int
    ctx: int
    done: int  # a context that has computed
    buf: int
    x: bytes

    def tensor(self, type_byte: int = 1, data: bytes | None = None, dims: tuple[int, ...] = (1, 3, 2, 2)) -> int:
        return self.p.tensor(dims, type_byte, self.x if data is None else data)


@pytest.fixture
def scene(proxy_factory: ProxyFactory, tiny_model: TinyModel) -> Scene:
    return build_scene(proxy_factory(torch_host(tiny_model.path)), tiny_model)


def build_scene(p: Proxy, tiny_model: TinyModel) -> Scene:
    """The scene on any host serving the tiny model as "m" (tests/runtime/nnrpc runs it over NNRPC)."""
    blob = p.alloc(tiny_model.bytes)
    one = p.alloc(struct.pack("<II", blob, len(tiny_model.bytes)))
    two = p.alloc(struct.pack("<IIII", blob, len(tiny_model.bytes), blob, 4))
    graph = load_named(p)
    x = tiny_model.input.numpy().tobytes()
    ctx, done = new_context(p, graph), new_context(p, graph)
    assert p.call("set_input", done, 0, p.tensor((1, 3, 2, 2), 1, x)) == 0
    assert p.call("compute", done) == 0
    return Scene(p, p.size(), one, two, graph, ctx, done, p.alloc(64), x)


def _set_inputs_then_compute(s: Scene, *inputs: tuple[int, int]) -> int:
    for index, tensor in inputs:
        assert s.p.call("set_input", s.ctx, index, tensor) == 0
    return s.p.call("compute", s.ctx)


E = Errno
PT = GraphEncoding.PYTORCH
# (id, the call, the errno a guest must get)
ERRNO_CASES: list[tuple[str, Callable[[Scene], int], Errno]] = [
    ("load-unknown-encoding", lambda s: s.p.call("load", s.one, 1, 99, 0, OUT), E.INVALID_ENCODING),
    ("load-encoding-without-backend", lambda s: s.p.call("load", s.one, 1, GraphEncoding.OPENVINO, 0, OUT),
     E.INVALID_ENCODING),
    ("load-unknown-target", lambda s: s.p.call("load", s.one, 1, PT, 7, OUT), E.INVALID_ARGUMENT),
    ("load-two-builders", lambda s: s.p.call("load", s.two, 2, PT, 0, OUT), E.INVALID_ARGUMENT),
    ("load-graph-out-past-memory", lambda s: s.p.call("load", s.one, 1, PT, 0, s.size), E.INVALID_ARGUMENT),
    ("load-builders-past-memory", lambda s: s.p.call("load", s.size - 4, 1, PT, 0, OUT), E.INVALID_ARGUMENT),
    ("load-huge-builder-count", lambda s: s.p.call("load", s.one, 0x7FFFFFFF, PT, 0, OUT), E.INVALID_ARGUMENT),
    ("name-not-utf8", lambda s: s.p.call("load_by_name", s.p.alloc(b"\xff\xfe"), 2, OUT), E.INVALID_ARGUMENT),
    ("name-unknown", lambda s: s.p.call("load_by_name", s.p.alloc(b"missing"), 7, OUT), E.NOT_FOUND),
    ("name-pointer-above-2GiB", lambda s: s.p.call("load_by_name", -16, 7, OUT), E.INVALID_ARGUMENT),
    ("config-past-memory",
     lambda s: s.p.call("load_by_name_with_config", s.p.alloc(b"missing"), 7, s.size, 1, OUT), E.INVALID_ARGUMENT),
    ("context-of-unknown-graph", lambda s: s.p.call("init_execution_context", 42, OUT), E.INVALID_ARGUMENT),
    ("context-out-past-memory", lambda s: s.p.call("init_execution_context", s.graph, s.size), E.INVALID_ARGUMENT),
    ("compute-with-nothing-set", lambda s: s.p.call("compute", s.ctx), E.INVALID_ARGUMENT),
    ("output-before-compute", lambda s: s.p.call("get_output", s.ctx, 0, OUT + 8, 64, OUT), E.INVALID_ARGUMENT),
    ("input-unknown-context", lambda s: s.p.call("set_input", 42, 0, s.tensor()), E.INVALID_ARGUMENT),
    ("input-struct-past-memory", lambda s: s.p.call("set_input", s.ctx, 0, s.size - 10), E.INVALID_ARGUMENT),
    ("input-unknown-type", lambda s: s.p.call("set_input", s.ctx, 0, s.tensor(9)), E.INVALID_ARGUMENT),
    ("input-data-short-of-dims", lambda s: s.p.call("set_input", s.ctx, 0, s.tensor(1, s.x[:-4])),
     E.INVALID_ARGUMENT),
    ("input-dims-past-memory",
     lambda s: s.p.call("set_input", s.ctx, 0, s.p.alloc(struct.pack("<IIB3xII", s.size, 4, 1, OUT, 48))),
     E.INVALID_ARGUMENT),
    ("input-data-past-memory",
     lambda s: s.p.call("set_input", s.ctx, 0, s.p.alloc(struct.pack(
         "<IIB3xII", s.p.alloc(struct.pack("<4I", 1, 3, 2, 2)), 4, 1, s.size - 8, 48))), E.INVALID_ARGUMENT),
    ("compute-missing-input-0",
     lambda s: _set_inputs_then_compute(s, (1, s.tensor(1, b"\0" * 4, (1,)))), E.INVALID_ARGUMENT),
    ("compute-forward-rejects-inputs",
     lambda s: _set_inputs_then_compute(s, (1, s.tensor(1, b"\0" * 4, (1,))), (0, s.tensor(1, b"\0" * 8, (1, 2)))),
     E.RUNTIME_ERROR),
    ("output-unknown-index", lambda s: s.p.call("get_output", s.done, 3, s.buf, 64, OUT), E.INVALID_ARGUMENT),
    ("output-written-past-memory", lambda s: s.p.call("get_output", s.done, 0, s.buf, 64, s.size),
     E.INVALID_ARGUMENT),
    ("output-buffer-past-memory", lambda s: s.p.call("get_output", s.done, 0, s.size - 4, 64, OUT),
     E.INVALID_ARGUMENT),
    ("compute_single-not-an-llm", lambda s: s.p.call("compute_single", s.done), E.INVALID_ARGUMENT),
    ("fini_single-not-an-llm", lambda s: s.p.call("fini_single", s.done), E.INVALID_ARGUMENT),
    ("get_output_single-not-an-llm", lambda s: s.p.call("get_output_single", s.done, 0, s.buf, 64, OUT),
     E.INVALID_ARGUMENT),
    ("compute-unknown-context", lambda s: s.p.call("compute", 99), E.INVALID_ARGUMENT),
    ("unload-unknown-graph", lambda s: s.p.call("unload", 99), E.INVALID_ARGUMENT),
    ("finalize-unknown-context", lambda s: s.p.call("finalize_execution_context", 99), E.INVALID_ARGUMENT),
]


@pytest.mark.parametrize(("call", "errno"), [c[1:] for c in ERRNO_CASES], ids=[c[0] for c in ERRNO_CASES])
def test_errno_paths(scene: Scene, call: Callable[[Scene], int], errno: Errno) -> None:
    assert call(scene) == errno


def test_short_output_buffer_gets_the_needed_size(scene: Scene) -> None:
    assert scene.p.call("get_output", scene.done, 0, scene.buf, 8, OUT) == Errno.TOO_LARGE
    assert scene.p.u32(OUT) == 20


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
