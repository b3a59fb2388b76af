"""A per-object work queue: what turns watch events, retries and resyncs into reconciles.

The semantics of controller-runtime's work queue, on asyncio: at most one run per key at a time; keys
added while their run is in progress get exactly one more run after it (a burst of events is one
reconcile of the newest state, never a stale one); a delayed add is a retry timer, and only the earliest
pending timer per key is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, work: Callable[[K], Awaitable[None]]) -> None:
        self._work = work  # must not raise: failures are the caller's to report and re-add with a delay
        self._running: dict[K, asyncio.Task[None]] = {}
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}

    def add(self, key: K, delay: float = 0.0) -> None:
        """Run ``work(key)`` now (after the current run of that key, if any), or after ``delay`` seconds."""
        if delay > 0:
            loop = asyncio.get_running_loop()
            when = loop.time() + delay
            timer = self._timers.get(key)
            if timer is not None:
                if timer.when() <= when:
                    return
                timer.cancel()
            self._timers[key] = loop.call_at(when, self._fire, key)
        elif key in self._running:
            self._dirty.add(key)
        else:
            # The task inherits the caller's context (kopf's event poster lives in a context variable).
            self._running[key] = asyncio.create_task(self._run(key), name=f"reconcile {key}")

    def pending(self, key: K) -> bool:
        """Whether a run of ``key`` is in progress, due, or waiting on a retry timer."""
        return key in self._running or key in self._timers

    def forget(self, key: K) -> None:
        """Drop the retry timer and any further run of ``key`` (a run in progress finishes)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._dirty.discard(key)

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._running)

    def depth(self, state: str) -> int:
        """Keys running, queued for one more run after the current one, or retrying on a timer."""
        return {"running": len(self._running), "queued": len(self._dirty), "retrying": len(self._timers)}[state]

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def _run(self, key: K) -> None:
        try:
            while True:
                self._dirty.discard(key)
                await self._work(key)
                if key not in self._dirty:
                    return
        finally:
            del self._running[key]
