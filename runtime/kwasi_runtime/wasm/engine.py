"""The wasmtime Engine kwasi runs guests on, and the epoch ticker that enforces deadlines."""

from __future__ import annotations

import importlib.metadata
import math
import threading
import weakref
from dataclasses import dataclass

import wasmtime

# A deadline traps up to one tick late; every tick wakes a thread, which on a small node preempts the
# model's compute threads (at 10 ms that was one wake per streamed token).
EPOCH_TICK_S = 0.05
# With epoch interruption on, a store with no deadline traps at the first check; "no timeout" is this.
NO_DEADLINE_TICKS = 1 << 62

WASMTIME_VERSION = importlib.metadata.version("wasmtime")


@dataclass(frozen=True)
class EngineSettings:
    fuel: bool = False
    opt_level: str = "speed"

    def fingerprint(self) -> str:
        """Everything that changes compiled code: a `.cwasm` is only valid for the same string."""
        return f"wasmtime={WASMTIME_VERSION};epoch=1;fuel={int(self.fuel)};opt={self.opt_level};move=0"


def deadline_ticks(timeout_s: float | None) -> int:
    if timeout_s is None or timeout_s <= 0:
        return NO_DEADLINE_TICKS
    return max(1, math.ceil(timeout_s / EPOCH_TICK_S))


class _Ticker(threading.Thread):
    def __init__(self, engine: wasmtime.Engine) -> None:
        super().__init__(name="kwasi-epoch", daemon=True)
        self._engine = weakref.ref(engine)

    def run(self) -> None:
        stop = threading.Event()
        while not stop.wait(EPOCH_TICK_S):
            engine = self._engine()
            if engine is None:
                return
            engine.increment_epoch()
            del engine


def make_engine(settings: EngineSettings) -> wasmtime.Engine:
    """A new Engine with its own epoch ticker thread; most callers want `shared_engine`."""
    cfg = wasmtime.Config()
    cfg.epoch_interruption = True
    cfg.consume_fuel = settings.fuel
    cfg.cranelift_opt_level = settings.opt_level
    # The host caches a view of guest memory across calls; the base address must not move when it grows.
    cfg.memory_may_move = False
    engine = wasmtime.Engine(cfg)
    _Ticker(engine).start()
    return engine


_engines: dict[EngineSettings, wasmtime.Engine] = {}
_engines_lock = threading.Lock()


def shared_engine(settings: EngineSettings) -> wasmtime.Engine:
    """One Engine (and one epoch ticker thread) per distinct setting in the process."""
    with _engines_lock:
        engine = _engines.get(settings)
        if engine is None:
            engine = _engines[settings] = make_engine(settings)
        return engine
