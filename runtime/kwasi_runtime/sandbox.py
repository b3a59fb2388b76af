"""Run a guest module in a fresh sandbox: new Store and instance, deadline, memory limit, WASI setup."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import wasmtime

if TYPE_CHECKING:
    from wasmtime._instance import InstanceExports

from kwasi_runtime.nn.guest_memory import GuestMemory
from kwasi_runtime.nn.host import NNHost
from kwasi_runtime.nn.interrupt import DeadlineExceeded, GuestCancelled
from kwasi_runtime.wasm.engine import EngineSettings, deadline_ticks, shared_engine
from kwasi_runtime.wasm.module_cache import default_cache_dir, load_module
from kwasi_runtime.wasm.stdio import DirectStdio, Output

log = logging.getLogger(__name__)

DEFAULT_MEMORY_LIMIT = 4 << 30  # the whole wasm32 address space; servers pass a tighter one
_READONLY = {"readonly", "ro"}
_WRITABLE = {"readwrite", "rw"}


@dataclass(frozen=True)
class Preopen:
    host: Path
    guest: str
    writable: bool = False


def parse_dir(value: str) -> Preopen:
    """WasmEdge's `--dir`: `path` or `guest_path:host_path`, optionally suffixed `:readonly` or `:rw`.
    Read-only unless `:rw` asks otherwise, because guests are untrusted."""
    parts = value.split(":")
    writable = False
    if len(parts) > 1 and parts[-1].lower() in _READONLY | _WRITABLE:
        writable = parts.pop().lower() in _WRITABLE
    if len(parts) == 1 and parts[0]:
        guest, host = parts[0], parts[0]
    elif len(parts) == 2 and all(parts):
        guest, host = parts
    else:
        raise ValueError(f"--dir {value!r}: expected path or guest_path:host_path[:readonly|:rw]")
    if not Path(host).is_dir():
        raise ValueError(f"--dir {value!r}: host directory {host!r} does not exist")
    return Preopen(Path(host), guest, writable)


class GuestStartError(RuntimeError):
    pass


@dataclass
class WasiSetup:
    args: Sequence[str] = ()
    env: Sequence[tuple[str, str]] = ()
    dirs: Sequence[Preopen] = ()
    stdin: Literal["inherit", "empty"] | Path = "empty"
    stdout: Output = "discard"
    stderr: Output = "discard"


@dataclass(frozen=True)
class Limits:
    timeout_s: float | None = None  # from the start of the run; wasm code is interrupted through epochs
    memory_bytes: int = DEFAULT_MEMORY_LIMIT
    fuel: int | None = None
    # A request's own deadline (time.monotonic), earlier than timeout_s allows; host calls observe it too.
    deadline: float | None = None

    def run_deadline(self, started: float) -> float | None:
        ends = [d for d in (self.deadline, started + self.timeout_s if self.timeout_s else None) if d is not None]
        return min(ends) if ends else None


@dataclass
class RunResult:
    exit_code: int | None = 0
    trap: str | None = None
    trap_code: wasmtime.TrapCode | None = None
    cancelled: bool = False
    instantiate_s: float | None = None  # fresh Store + WASI + instantiation, when it got that far
    deadline_exceeded: bool = False  # the deadline passed inside a host call (no epoch check there)

    @property
    def timed_out(self) -> bool:
        return self.trap_code is wasmtime.TrapCode.INTERRUPT or self.deadline_exceeded

    @property
    def out_of_fuel(self) -> bool:
        return self.trap_code is wasmtime.TrapCode.OUT_OF_FUEL


class Sandbox:
    """A compiled, linked guest; `run` instantiates it afresh every time. Safe to share between threads."""

    def __init__(
        self,
        wasm: bytes | Path,
        host: NNHost,
        *,
        settings: EngineSettings | None = None,
        cache_dir: Path | Literal["default"] | None = "default",
        fast_calls: bool = True,
    ) -> None:
        self.settings = settings or EngineSettings()
        self.host = host
        self.engine = shared_engine(self.settings)
        data = wasm.read_bytes() if isinstance(wasm, Path) else wasm
        self.origin = str(wasm) if isinstance(wasm, Path) else f"<{len(data)}-byte module>"
        cache = default_cache_dir() if cache_dir == "default" else cache_dir
        self.module = load_module(self.engine, data, self.settings, cache)
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        host.define(linker, fast=fast_calls)
        # Guests built for other hosts may import more; they fail only if they call it.
        linker.define_unknown_imports_as_traps(self.module)
        self._pre = linker.instantiate_pre(self.module)
        # Runs that can open no file for writing write stdout/stderr on their own thread (wasm/stdio.py).
        self._direct: tuple[DirectStdio, wasmtime.InstancePre] | None = None
        if fast_calls and DirectStdio.available():
            stdio = DirectStdio()
            stdio.define(linker)
            self._direct = (stdio, linker.instantiate_pre(self.module))

    @contextmanager
    def instance(
        self, wasi: WasiSetup, limits: Limits | None = None, cancel: threading.Event | None = None
    ) -> Iterator[GuestInstance]:
        """A fresh store and instance with this thread's WASI-NN state bound to it until the block ends.
        Raises wasmtime errors from instantiation (e.g. the memory limit)."""
        limits = limits or Limits()
        deadline = limits.run_deadline(time.monotonic())
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=limits.memory_bytes)
        if self.settings.fuel:
            store.set_fuel(limits.fuel if limits.fuel is not None else (1 << 63) - 1)
        store.set_epoch_deadline(deadline_ticks(None if deadline is None else max(0.001, deadline - time.monotonic())))
        direct = None if any(d.writable for d in wasi.dirs) else self._direct
        store.set_wasi(_wasi_config(wasi, outputs=direct is None))
        with contextlib.ExitStack() as stack:
            stdio = None if direct is None else stack.enter_context(direct[0].bound(wasi.stdout, wasi.stderr))
            run = stack.enter_context(self.host.guest_run(cancel, deadline))
            instance = (self._pre if direct is None else direct[1]).instantiate(store)
            exports = instance.exports(store)
            memory = exports.get("memory")
            if isinstance(memory, wasmtime.Memory):
                run.memory = GuestMemory(memory)
                if stdio is not None:
                    stdio.memory = run.memory
            yield GuestInstance(store, instance, exports)

    def check_instantiates(self) -> None:
        """Instantiates the module once (no function is called); GuestStartError says why it cannot be."""
        try:
            with self.instance(WasiSetup()):
                pass
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise GuestStartError(f"guest {self.origin} cannot be instantiated: {_first_line(str(e))}") from None

    def run(
        self,
        wasi: WasiSetup,
        limits: Limits | None = None,
        entry: str = "_start",
        cancel: threading.Event | None = None,
    ) -> RunResult:
        """Runs a WASI command to completion; traps, exits and deadline hits come back as a RunResult.
        Setting `cancel` stops the guest at its next WASI-NN call (`RunResult.cancelled`)."""
        limits = limits or Limits()
        deadline = limits.run_deadline(time.monotonic())
        result = self._run(wasi, limits, entry, cancel)
        if result.exit_code is None and cancel is not None and cancel.is_set():
            result.cancelled = True
        elif result.exit_code is None and not result.timed_out and deadline is not None \
                and time.monotonic() >= deadline and result.trap is not None and "deadline" in result.trap:
            result.deadline_exceeded = True
        return result

    def _run(
        self, wasi: WasiSetup, limits: Limits | None, entry: str, cancel: threading.Event | None
    ) -> RunResult:
        started = time.perf_counter()
        instantiate_s = None
        try:
            with self.instance(wasi, limits, cancel) as inst:
                instantiate_s = time.perf_counter() - started
                start = inst.exports.get(entry)
                if not isinstance(start, wasmtime.Func):
                    result = RunResult(exit_code=None, trap=f"the module exports no function {entry!r}")
                else:
                    start(inst.store)
                    result = RunResult(exit_code=0)
        except wasmtime.ExitTrap as e:
            result = RunResult(exit_code=e.code)
        except wasmtime.Trap as e:
            result = RunResult(exit_code=None, trap=_trap_reason(e), trap_code=e.trap_code)
        except wasmtime.WasmtimeError as e:
            result = RunResult(exit_code=None, trap=_first_line(str(e)))
        except GuestCancelled as e:  # the public define_func path re-raises the host's exception
            result = RunResult(exit_code=None, trap=str(e), deadline_exceeded=isinstance(e, DeadlineExceeded))
        result.instantiate_s = instantiate_s
        return result


@dataclass
class GuestInstance:
    """A live guest: its Store, wasmtime instance and exports, valid inside `Sandbox.instance`."""

    store: wasmtime.Store
    instance: wasmtime.Instance
    exports: InstanceExports


def _wasi_config(setup: WasiSetup, outputs: bool = True) -> wasmtime.WasiConfig:
    """`outputs=False`: stdout and stderr are left to DirectStdio (WASI's default for them is a sink)."""
    cfg = wasmtime.WasiConfig()
    cfg.argv = list(setup.args)
    # Only what the caller passes: the host environment never leaks into a guest.
    cfg.env = [list(kv) for kv in setup.env]
    for d in setup.dirs:
        cfg.preopen_dir(str(d.host), d.guest, d.writable)
    if setup.stdin == "inherit":
        cfg.inherit_stdin()
    elif isinstance(setup.stdin, Path):
        cfg.stdin_file = str(setup.stdin)
    if outputs:
        _set_output(cfg, setup.stdout, "stdout")
        _set_output(cfg, setup.stderr, "stderr")
    return cfg


def _set_output(cfg: wasmtime.WasiConfig, out: Output, which: str) -> None:
    if out == "inherit":
        getattr(cfg, f"inherit_{which}")()
    elif callable(out):
        setattr(cfg, f"{which}_custom", out)
    # "discard": WASI's default is a closed sink.


def _trap_reason(e: wasmtime.Trap) -> str:
    code = e.trap_code
    if code is wasmtime.TrapCode.INTERRUPT:
        return "deadline exceeded: the guest was interrupted"
    if code is wasmtime.TrapCode.OUT_OF_FUEL:
        return "fuel exhausted"
    text = _first_line(e.message)
    return f"{code.name.lower().replace('_', ' ')}: {text}" if code is not None else text


def _first_line(text: str) -> str:
    """The cause of a wasmtime error in one line: wasmtime puts it after "Caused by:", below the backtrace."""
    _, _, cause = text.partition("Caused by:")
    lines = [ln.strip() for ln in (cause or text).strip().splitlines() if ln.strip()]
    if not lines:
        return "unknown error"
    return lines[-1].removeprefix("wasm trap:").strip() if cause else lines[0]
