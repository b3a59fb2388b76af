"""The `wasi_ephemeral_nn` host functions: guest memory in, backend calls, errnos out.

Every function is defined once per Linker and finds the calling guest's state through a thread-local,
because a wasmtime Store runs on one thread at a time and wasmtime-py's Caller has no store data.
No Python exception may escape into wasmtime (it would trap, and wasmtime-py routes it through a
process-global), so each function maps failures to an errno.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import wasmtime

from kwasi_runtime.nn import interrupt
from kwasi_runtime.nn.abi import (
    IMPORT_MODULE,
    Errno,
    ExecutionTarget,
    NNError,
    TensorTypeNumbering,
)
from kwasi_runtime.nn.backend_api import BackendResolver, NoBackends, Tensor
from kwasi_runtime.nn.guest_memory import U32_MASK, GuestMemory
from kwasi_runtime.nn.handles import NNSession
from kwasi_runtime.nn.interrupt import GuestCancelled
from kwasi_runtime.nn.models import NamedModels
from kwasi_runtime.wasm import raw_linker

log = logging.getLogger(__name__)

_I32 = wasmtime.ValType.i32()

# name → number of i32 parameters; every function returns an i32 errno.
SIGNATURES: dict[str, int] = {
    "load": 5,
    "load_by_name": 3,
    "load_by_name_with_config": 5,
    "init_execution_context": 2,
    "set_input": 3,
    "compute": 1,
    "get_output": 5,
    "compute_single": 1,
    "get_output_single": 5,
    "fini_single": 1,
    "unload": 1,
    "finalize_execution_context": 1,
}


@dataclass
class GuestRun:
    """What the host functions need about the guest running on this thread."""

    session: NNSession = field(default_factory=NNSession)
    memory: GuestMemory | None = None
    cancel: threading.Event | None = None

    def mem(self) -> GuestMemory:
        if self.memory is None:
            raise NNError(Errno.MISSING_MEMORY, "the guest exports no linear memory named 'memory'")
        return self.memory


@dataclass(frozen=True)
class HostOptions:
    # LlamaEdge passes zero-length output buffers and relies on WasmEdge copying the whole output anyway.
    wasmedge_compat: bool = False
    tensor_types: TensorTypeNumbering = TensorTypeNumbering.WITX


def _errno_guard(name: str, fn: Callable[..., None]) -> Callable[..., int]:
    @functools.wraps(fn)
    def guarded(*args: int) -> int:
        try:
            fn(*args)
        except GuestCancelled:
            raise
        except NNError as e:
            log.debug("%s -> %s: %s", name, e.errno.name, e)
            return int(e.errno)
        except Exception:
            log.exception("%s failed inside the host", name)
            return int(Errno.RUNTIME_ERROR)
        return 0

    return guarded


class NNHost:
    """Process-wide WASI-NN host: named models and backends shared by every guest run.

    `backends` serves guests' plain `load` (model bytes through guest memory); without it only named models
    can be used. The host never changes after construction: `with_models` makes a new one.
    """

    def __init__(
        self,
        models: NamedModels | None = None,
        backends: BackendResolver | None = None,
        options: HostOptions | None = None,
    ) -> None:
        self.models = models or NamedModels()
        self.backends: BackendResolver = backends or NoBackends()
        self.options = options or HostOptions()
        self._local = threading.local()
        self._keepalive: list[object] = []  # raw callbacks must outlive every linker and store

    def with_models(self, models: NamedModels) -> NNHost:
        """The same backends and options over another model table (e.g. the server's metered one)."""
        return NNHost(models, self.backends, self.options)

    @contextmanager
    def guest_run(self, cancel: threading.Event | None = None,
                  deadline: float | None = None) -> Iterator[GuestRun]:
        """Binds a fresh handle table to this thread for one guest run and frees it afterwards.
        Once `cancel` is set or `deadline` (time.monotonic) passes, the guest's next WASI-NN call traps, and a
        backend blocked inside one stops waiting (`interrupt`), so a stream stops within one token."""
        previous = getattr(self._local, "run", None)
        run = GuestRun(cancel=cancel)
        self._local.run = run
        try:
            with interrupt.bound(cancel, deadline):
                yield run
        finally:
            self._local.run = previous
            run.session.close()
            if run.memory is not None:
                run.memory.release()

    def _run(self) -> GuestRun:
        run: GuestRun | None = getattr(self._local, "run", None)
        if run is None:
            raise NNError(Errno.RUNTIME_ERROR, "no guest run is bound to this thread")
        interrupt.check()
        return run

    def define(self, linker: wasmtime.Linker, fast: bool = True) -> None:
        """Defines the 12 functions on `linker`: through the raw C API when `fast` and available,
        else through wasmtime-py's public `define_func`."""
        use_raw = fast and raw_linker.available()
        for name, nparams in SIGNATURES.items():
            guarded = _errno_guard(name, getattr(self, f"_{name}"))
            if use_raw:
                raw_linker.define_i32_func(linker, IMPORT_MODULE, name, nparams, guarded, self._keepalive,
                                           trap_on=GuestCancelled)
            else:
                linker.define_func(
                    IMPORT_MODULE,
                    name,
                    wasmtime.FuncType([_I32] * nparams, [_I32]),
                    guarded,
                    access_caller=True,
                )

    # --- graphs -------------------------------------------------------------------------------------

    def _load(self, caller: wasmtime.Caller, builders_ptr: int, builders_len: int, encoding: int,
              target: int, graph_out: int) -> None:
        run = self._run()
        mem = run.mem()
        mem.check(caller, graph_out, 4)
        builders = mem.read_builders(caller, builders_ptr, builders_len)
        backend = self.backends.for_load(encoding)
        try:
            tgt = ExecutionTarget(target)
        except ValueError:
            raise NNError(Errno.INVALID_ARGUMENT, f"unknown execution target {target}") from None
        graph = backend.load(builders, tgt)
        mem.write_u32(caller, graph_out, run.session.add_graph(graph))

    def _load_by_name(self, caller: wasmtime.Caller, name_ptr: int, name_len: int, graph_out: int) -> None:
        self._load_named(caller, name_ptr, name_len, None, graph_out)

    def _load_by_name_with_config(self, caller: wasmtime.Caller, name_ptr: int, name_len: int,
                                  config_ptr: int, config_len: int, graph_out: int) -> None:
        run = self._run()
        config = run.mem().read(caller, config_ptr, config_len)
        self._load_named(caller, name_ptr, name_len, config, graph_out)

    def _load_named(self, caller: wasmtime.Caller, name_ptr: int, name_len: int, config: bytes | None,
                    graph_out: int) -> None:
        run = self._run()
        mem = run.mem()
        mem.check(caller, graph_out, 4)
        try:
            name = mem.read(caller, name_ptr, name_len).decode("utf-8")
        except UnicodeDecodeError:
            raise NNError(Errno.INVALID_ARGUMENT, "model name is not UTF-8") from None
        # WasmEdge returns the live graph of a name and ignores the new config.
        handle = run.session.cached(name)
        if handle is None:
            model = self.models.get(name)
            if model is None:
                raise NNError(Errno.NOT_FOUND, f"no model named {name!r}")
            handle = run.session.add_graph(model.graph(config), name)
        mem.write_u32(caller, graph_out, handle)

    def _unload(self, caller: wasmtime.Caller, graph: int) -> None:
        self._run().session.unload(graph & U32_MASK)

    # --- execution contexts ---------------------------------------------------------------------------

    def _init_execution_context(self, caller: wasmtime.Caller, graph: int, ctx_out: int) -> None:
        run = self._run()
        mem = run.mem()
        mem.check(caller, ctx_out, 4)
        mem.write_u32(caller, ctx_out, run.session.add_context(graph & U32_MASK))

    def _finalize_execution_context(self, caller: wasmtime.Caller, ctx: int) -> None:
        self._run().session.finalize(ctx & U32_MASK)

    def _set_input(self, caller: wasmtime.Caller, ctx: int, index: int, tensor_ptr: int) -> None:
        run = self._run()
        mem = run.mem()
        context = run.session.context(ctx & U32_MASK)
        dims_ptr, dims_len, raw_type, data_ptr, data_len = mem.read_tensor_header(caller, tensor_ptr)
        ty = self.options.tensor_types.decode(raw_type)
        if ty is None:
            raise NNError(
                Errno.INVALID_ARGUMENT,
                f"tensor type {raw_type} is unknown in the {self.options.tensor_types.value} numbering",
            )
        dims = mem.read_u32_array(caller, dims_ptr, dims_len)
        data = mem.read(caller, data_ptr, data_len)
        context.set_input(index & U32_MASK, Tensor(dims, ty, data))

    def _compute(self, caller: wasmtime.Caller, ctx: int) -> None:
        self._run().session.context(ctx & U32_MASK).compute()

    def _get_output(self, caller: wasmtime.Caller, ctx: int, index: int, out_ptr: int, out_max: int,
                    written_ptr: int) -> None:
        run = self._run()
        context = run.session.context(ctx & U32_MASK)
        self._check_output(caller, run.mem(), out_ptr, out_max, written_ptr)
        data = context.get_output(index & U32_MASK)
        self._write_output(caller, run.mem(), data, out_ptr, out_max, written_ptr)

    # --- WasmEdge streaming extension -------------------------------------------------------------------

    def _compute_single(self, caller: wasmtime.Caller, ctx: int) -> None:
        self._run().session.context(ctx & U32_MASK).compute_single()

    def _get_output_single(self, caller: wasmtime.Caller, ctx: int, index: int, out_ptr: int, out_max: int,
                           written_ptr: int) -> None:
        run = self._run()
        context = run.session.context(ctx & U32_MASK)
        self._check_output(caller, run.mem(), out_ptr, out_max, written_ptr)
        data = context.get_output_single(index & U32_MASK)
        self._write_output(caller, run.mem(), data, out_ptr, out_max, written_ptr)

    def _fini_single(self, caller: wasmtime.Caller, ctx: int) -> None:
        self._run().session.context(ctx & U32_MASK).fini_single()

    def _check_output(self, caller: wasmtime.Caller, mem: GuestMemory, out_ptr: int, out_max: int,
                      written_ptr: int) -> None:
        """The output's pointers, before the backend is asked (it may be a remote call, or a costly one)."""
        mem.check(caller, written_ptr, 4)
        if not self.options.wasmedge_compat:
            mem.check(caller, out_ptr, out_max)

    def _write_output(self, caller: wasmtime.Caller, mem: GuestMemory, data: bytes, out_ptr: int,
                      out_max: int, written_ptr: int) -> None:
        mem.check(caller, written_ptr, 4)
        size = len(data)
        if self.options.wasmedge_compat:
            # Copy the whole output when it stays inside linear memory, whatever the guest said it had.
            if not mem.fits(caller, out_ptr, size):
                mem.write_u32(caller, written_ptr, size)
                raise NNError(Errno.TOO_LARGE, f"output of {size} bytes does not fit in linear memory")
        else:
            mem.check(caller, out_ptr, out_max)
            if size > out_max & U32_MASK:
                mem.write_u32(caller, written_ptr, size)
                raise NNError(Errno.TOO_LARGE, f"output of {size} bytes exceeds the {out_max & U32_MASK}-byte buffer")
        mem.write(caller, out_ptr, data)
        mem.write_u32(caller, written_ptr, size)
