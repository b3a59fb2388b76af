"""Why a guest's host call must stop now: its client went away (cancel) or its request's deadline passed.

Epoch deadlines only interrupt wasm code; a guest blocked inside a host call (waiting for a KV slot's turn, a
long prefill) never reaches an epoch check. The host binds each guest run's cancel event and deadline to its
thread here, and backends that block poll `stop_reason()` while they wait, so a stopped request frees what it
holds at once instead of when its turn comes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# How often a blocked host call looks at its guest's cancel event and deadline.
POLL_S = 0.05


class GuestCancelled(Exception):
    """Raised inside a host function to stop the guest with a trap (e.g. its HTTP client went away)."""


class DeadlineExceeded(GuestCancelled):
    """The guest run's deadline passed while it was inside a host call."""


@dataclass(frozen=True)
class _Stop:
    cancel: threading.Event | None
    deadline: float | None  # time.monotonic()


_local = threading.local()


@contextmanager
def bound(cancel: threading.Event | None, deadline: float | None) -> Iterator[None]:
    """Makes `cancel` and `deadline` those of the guest run on this thread until the block ends."""
    previous = getattr(_local, "stop", None)
    _local.stop = _Stop(cancel, deadline)
    try:
        yield
    finally:
        _local.stop = previous


def stop_reason() -> GuestCancelled | None:
    """The exception that should end this thread's guest run now, or None (also when nothing is bound)."""
    stop: _Stop | None = getattr(_local, "stop", None)
    if stop is None:
        return None
    if stop.cancel is not None and stop.cancel.is_set():
        return GuestCancelled("cancelled by the host")
    if stop.deadline is not None and time.monotonic() >= stop.deadline:
        return DeadlineExceeded("deadline exceeded while the guest was inside a host call")
    return None


def check() -> None:
    """Raises the stop reason, if any."""
    reason = stop_reason()
    if reason is not None:
        raise reason
