"""Guests for tests: the C guests `make guests` builds, the hand-written WAT guests, and the proxy guest driver."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import wasmtime

from kwasi_runtime.sandbox import GuestInstance
from kwasi_testing import REPO

ROOT = REPO
BUILT_GUESTS = ROOT / "build" / "guests"
WAT_GUESTS = ROOT / "tests" / "runtime" / "guests"


def built_guest(name: str) -> Path:
    path = BUILT_GUESTS / f"{name}.wasm"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make guests` (make test does)")
    return path


def wat_guest(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((WAT_GUESTS / f"{name}.wat").read_text()))


class Proxy:
    """Drives the host functions directly through tests/runtime/guests/proxy.wat, inside a live instance."""

    HEAP = 1024

    def __init__(self, inst: GuestInstance) -> None:
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
