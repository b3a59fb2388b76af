"""A guest's stdout and stderr written on the guest's own thread.

wasmtime's custom WASI outputs hand every write to a tokio worker thread and wait for it: for a streamed token
that is two more thread wake-ups than the guest's own, on the cores the model's forward needs. `define` puts
an `fd_write` in their place, through the raw C API, that passes fds 1 and 2 to the sinks `bound` gave this
thread. wasmtime's own `fd_write` cannot be called from it (it needs a calling instance's memory), so it
answers every other fd itself, with EBADF: right only for a guest that can open no file for writing, which is
why a sandbox links it only for runs without a writable preopen.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, Protocol

import wasmtime

from kwasi_runtime.wasm import raw_linker

WASI_MODULE = "wasi_snapshot_preview1"
ERRNO_SUCCESS = 0
ERRNO_BADF = 8
ERRNO_FAULT = 21  # an iovec or the result pointer outside linear memory
ERRNO_INVAL = 28
IOV_MAX = 1024  # as POSIX caps writev: one call cannot make the host walk millions of iovecs
_U32_MASK = 0xFFFFFFFF


class GuestBytes(Protocol):
    """The bounds-checked view of a run's linear memory the host already keeps (nn's GuestMemory)."""

    def fits(self, store: Any, ptr: int, length: int) -> bool: ...
    def read(self, store: Any, ptr: int, length: int) -> bytes: ...
    def read_u32_array(self, store: Any, ptr: int, count: int) -> tuple[int, ...]: ...
    def write_u32(self, store: Any, ptr: int, value: int) -> None: ...


Output = Literal["inherit", "discard"] | Callable[[bytes], None]


def _discard(_data: bytes) -> None:
    return None


def _sink(out: Output, fd: int) -> Callable[[bytes], None]:
    if out == "discard":
        return _discard
    if out == "inherit":
        return lambda data: _write_all(fd, data)
    return out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Run:
    __slots__ = ("memory", "sinks")

    def __init__(self, sinks: tuple[Callable[[bytes], None], Callable[[bytes], None]]) -> None:
        self.sinks = sinks
        self.memory: GuestBytes | None = None


class DirectStdio:
    """Defines `fd_write` on a linker (after `define_wasi`) and binds one run's outputs to a thread."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._keepalive: list[object] = []

    @staticmethod
    def available() -> bool:
        return raw_linker.available()

    def define(self, linker: wasmtime.Linker) -> None:
        linker.allow_shadowing = True
        try:
            raw_linker.define_i32_func(linker, WASI_MODULE, "fd_write", 4, self._fd_write, self._keepalive)
        finally:
            linker.allow_shadowing = False

    @contextmanager
    def bound(self, stdout: Output, stderr: Output) -> Iterator[_Run]:
        """Until the block ends, this thread's guest writes fds 1 and 2 to these outputs. Set `memory` on the
        result once the instance exists (a guest without an exported memory cannot pass a buffer)."""
        previous = getattr(self._local, "run", None)
        run = self._local.run = _Run((_sink(stdout, 1), _sink(stderr, 2)))
        try:
            yield run
        finally:
            self._local.run = previous

    def _fd_write(self, caller: raw_linker.RawCaller, fd: int, iovs: int, count: int, nwritten: int) -> int:
        run: _Run | None = getattr(self._local, "run", None)
        if run is None or run.memory is None or fd not in (1, 2):
            return ERRNO_BADF
        count &= _U32_MASK
        if count > IOV_MAX:
            return ERRNO_INVAL
        mem = run.memory
        if not mem.fits(caller, iovs, 8 * count) or not mem.fits(caller, nwritten, 4):
            return ERRNO_FAULT
        flat = mem.read_u32_array(caller, iovs, 2 * count)
        spans = list(zip(flat[::2], flat[1::2], strict=True))
        if not all(mem.fits(caller, ptr, length) for ptr, length in spans):
            return ERRNO_FAULT  # checked whole before anything is written
        data = b"".join(mem.read(caller, ptr, length) for ptr, length in spans)
        if data:
            run.sinks[fd - 1](data)
        mem.write_u32(caller, nwritten, len(data))
        return ERRNO_SUCCESS
