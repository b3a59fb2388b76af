"""Host functions through wasmtime's unchecked C API, skipping wasmtime-py's per-call trampoline.

`Linker.define_func` builds a Caller, a Val per parameter and a converted result on every call (~8 µs);
the raw callback reads the i32 slots directly (~1 µs). This relies on `wasmtime._ffi`, a private module,
so the version is pinned exactly (wasmtime==50.0.1) and `available()` lets callers fall back to the
public path, which the tests also run.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from typing import Any

import wasmtime

try:
    from wasmtime import _ffi as _wffi

    _LIB: ctypes.CDLL | None = ctypes.CDLL(str(_wffi.filename))
except (ImportError, AttributeError, OSError):  # a wasmtime-py without the private module
    _LIB = None

# (env, caller, args_and_results, count) -> trap pointer or 0; plain c_void_p so ctypes builds no objects.
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_SLOT = 16  # sizeof(wasmtime_val_raw_t)
_RESULT = struct.Struct("<i")

if _LIB is not None:
    _define_unchecked = _LIB.wasmtime_linker_define_func_unchecked
    _define_unchecked.restype = ctypes.c_void_p
    _define_unchecked.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
        ctypes.c_void_p, _CALLBACK, ctypes.c_void_p, _FINALIZER,
    ]
    _trap_new = _LIB.wasmtime_trap_new
    _trap_new.restype = ctypes.c_void_p
    _trap_new.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    _caller_context = _LIB.wasmtime_caller_context
    _caller_context.restype = ctypes.c_void_p
    _caller_context.argtypes = [ctypes.c_void_p]


def available() -> bool:
    return _LIB is not None


class RawCaller:
    """Stands in for `wasmtime.Caller` where the host only needs `_context()` (Memory.data_len/data_ptr)."""

    __slots__ = ("_ptr",)

    def __init__(self, ptr: int) -> None:
        self._ptr = ptr

    def _context(self) -> Any:
        ctx = _caller_context(self._ptr)
        return ctypes.cast(ctx, ctypes.POINTER(_wffi.wasmtime_context_t))


def _no_finalizer(_env: int | None) -> None:
    return None


_NO_FINALIZER = _FINALIZER(_no_finalizer)


def define_i32_func(
    linker: wasmtime.Linker,
    module: str,
    name: str,
    nparams: int,
    impl: Callable[..., int],
    keepalive: list[object],
    trap_on: type[BaseException] | None = None,
) -> None:
    """Defines `module.name: (i32 x nparams) -> i32` calling `impl(caller, *params)`.

    A Python exception cannot cross the C callback: `trap_on` exceptions become a wasm trap carrying
    their message, any other one errno 5. The callback objects are appended to `keepalive`, which must
    outlive the linker and every store it instantiates.
    """
    if _LIB is None:
        raise RuntimeError("the raw wasmtime C API is not available")
    unpack = struct.Struct("<" + "i12x" * nparams).unpack
    size = _SLOT * max(nparams, 1)
    string_at = ctypes.string_at
    pack_into_slot = _RESULT.pack
    memmove = ctypes.memmove

    def callback(_env: int | None, caller: int, slots: int, _count: int) -> int:
        try:
            rc = impl(RawCaller(caller), *unpack(string_at(slots, size)))
        except BaseException as e:  # nothing may unwind through the C frame
            if trap_on is not None and isinstance(e, trap_on):
                message = str(e).encode()
                trap: int = _trap_new(message, len(message))
                return trap
            rc = 5  # RuntimeError
        memmove(slots, pack_into_slot(rc), 4)
        return 0

    i32 = wasmtime.ValType.i32()
    ty = wasmtime.FuncType([i32] * nparams, [i32])
    cb = _CALLBACK(callback)
    keepalive.extend((cb, ty))
    mod, nm = module.encode(), name.encode()
    err = _define_unchecked(
        ctypes.cast(linker.ptr(), ctypes.c_void_p), mod, len(mod), nm, len(nm),
        ctypes.cast(ty.ptr(), ctypes.c_void_p), cb, None, _NO_FINALIZER,
    )
    if err:
        raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ctypes.POINTER(_wffi.wasmtime_error_t)))
