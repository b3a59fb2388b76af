"""Bounds-checked access to one guest's linear memory from inside host calls."""

from __future__ import annotations

import ctypes
import struct

import wasmtime

from kwasi_runtime.nn.abi import Errno, NNError

_U32 = struct.Struct("<I")
_TENSOR = struct.Struct("<IIB3xII")
_BUILDER = struct.Struct("<II")

U32_MASK = 0xFFFFFFFF


class GuestMemory:
    """A cached memoryview over the guest's exported `memory`.

    Looking the memory up through the Caller costs ~3 µs a call, so the view is kept for the life of the
    store. The engine is built with `memory_may_move=False`, so the base address is stable while the memory
    grows; memory never shrinks, so the cached size is a safe lower bound and is refreshed only when an
    access falls past it.
    """

    __slots__ = ("_memory", "_size", "_view")

    def __init__(self, memory: wasmtime.Memory) -> None:
        self._memory = memory
        self._view: memoryview = memoryview(b"")
        self._size = 0

    def size(self, store: wasmtime.Caller | wasmtime.Store) -> int:
        self._refresh(store)
        return self._size

    def _refresh(self, store: wasmtime.Caller | wasmtime.Store) -> None:
        size = self._memory.data_len(store)
        if size != self._size:
            base = ctypes.addressof(self._memory.data_ptr(store).contents)
            self._view = memoryview((ctypes.c_ubyte * size).from_address(base)).cast("B")
            self._size = size

    def check(self, store: wasmtime.Caller | wasmtime.Store, ptr: int, length: int) -> int:
        """Returns `ptr` as an unsigned offset, or raises InvalidArgument if [ptr, ptr+length) is outside."""
        # wasmtime-py hands i32 parameters over as signed ints.
        ptr &= U32_MASK
        length &= U32_MASK
        if ptr + length > self._size:
            self._refresh(store)
            if ptr + length > self._size:
                raise NNError(
                    Errno.INVALID_ARGUMENT,
                    f"guest range [{ptr:#x}, +{length}) is outside linear memory of {self._size} bytes",
                )
        return ptr

    def fits(self, store: wasmtime.Caller | wasmtime.Store, ptr: int, length: int) -> bool:
        try:
            self.check(store, ptr, length)
        except NNError:
            return False
        return True

    def read(self, store: wasmtime.Caller | wasmtime.Store, ptr: int, length: int) -> bytes:
        p = self.check(store, ptr, length)
        return self._view[p : p + (length & U32_MASK)].tobytes()

    def read_u32(self, store: wasmtime.Caller | wasmtime.Store, ptr: int) -> int:
        p = self.check(store, ptr, 4)
        value: int = _U32.unpack_from(self._view, p)[0]
        return value

    def read_tensor_header(
        self, store: wasmtime.Caller | wasmtime.Store, ptr: int
    ) -> tuple[int, int, int, int, int]:
        """(dims_ptr, dims_len, type byte, data_ptr, data_len): only the byte at offset 8 is the type,
        since Rust crates write a 4-byte enum there and WasmEdge reads its low byte."""
        p = self.check(store, ptr, _TENSOR.size)
        dims_ptr, dims_len, ty, data_ptr, data_len = _TENSOR.unpack_from(self._view, p)
        return dims_ptr, dims_len, ty, data_ptr, data_len

    def read_u32_array(self, store: wasmtime.Caller | wasmtime.Store, ptr: int, count: int) -> tuple[int, ...]:
        count &= U32_MASK
        if count > 0x3FFFFFFF:
            raise NNError(Errno.INVALID_ARGUMENT, f"array of {count} u32 cannot fit in linear memory")
        p = self.check(store, ptr, count * 4)
        return struct.unpack_from(f"<{count}I", self._view, p)

    def read_builders(self, store: wasmtime.Caller | wasmtime.Store, ptr: int, count: int) -> list[bytes]:
        count &= U32_MASK
        if count > 0x1FFFFFFF:
            raise NNError(Errno.INVALID_ARGUMENT, f"builder array of {count} entries cannot fit in memory")
        p = self.check(store, ptr, count * _BUILDER.size)
        entries = [_BUILDER.unpack_from(self._view, p + i * _BUILDER.size) for i in range(count)]
        return [self.read(store, bptr, blen) for bptr, blen in entries]

    def write(self, store: wasmtime.Caller | wasmtime.Store, ptr: int, data: bytes) -> None:
        p = self.check(store, ptr, len(data))
        self._view[p : p + len(data)] = data

    def write_u32(self, store: wasmtime.Caller | wasmtime.Store, ptr: int, value: int) -> None:
        p = self.check(store, ptr, 4)
        _U32.pack_into(self._view, p, value & U32_MASK)

    def release(self) -> None:
        self._view.release()
        self._view = memoryview(b"")
        self._size = 0
