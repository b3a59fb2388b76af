"""A bounded, prioritised gate for the operator's writes to the API server."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator

# Write priorities: under a burst the Deployments go first (pods start sooner), status updates last.
PRIO_DEPLOYMENT, PRIO_CHILD, PRIO_STATUS = 0, 1, 2


class Limiter:
    """At most ``limit`` writes in flight; waiters are served by priority, then in arrival order.

    Writes other than Deployments also wait until no Deployment write has been pending for ``quiet_s``
    (but never longer than ``max_defer_s``). Under a burst of new objects the API server's CPU then goes
    to the Deployments, which start the pods, and the Services, PDBs, status and the cluster's own
    follow-up work (ClusterIPs, EndpointSlices, …) come right after; with a plain priority queue those
    writes would fill every gap between Deployments as the objects trickle in. Hundreds of reconciles at
    once would otherwise all be in flight at the API server, sharing its CPU and all finishing late.
    """

    def __init__(self, limit: int, quiet_s: float = 0.1, max_defer_s: float = 5.0) -> None:
        self.free = limit
        self.waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self.seq = itertools.count()
        self.quiet_s = quiet_s
        self.max_defer_s = max_defer_s
        self.urgent = 0  # Deployment writes waiting or in flight
        # Set once no Deployment write has been pending for quiet_s: what deferred writes wait on (one
        # wake-up each, where polling woke every waiter every quiet_s through a burst).
        self.calm = asyncio.Event()
        self.calm.set()
        self._calm_timer: asyncio.TimerHandle | None = None

    @contextlib.asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        urgent = priority == PRIO_DEPLOYMENT
        if urgent:
            self._urgent_begins()
        else:
            await self._defer()
        try:
            await self._acquire(priority)
            try:
                yield
            finally:
                if urgent:  # first: writes waiting for calm line up before the slot is handed on
                    self._urgent_ends()
                    urgent = False
                self._release()
        finally:
            if urgent:
                self._urgent_ends()

    def _urgent_begins(self) -> None:
        self.urgent += 1
        self.calm.clear()
        if self._calm_timer is not None:
            self._calm_timer.cancel()
            self._calm_timer = None

    def _urgent_ends(self) -> None:
        self.urgent -= 1
        if self.urgent == 0:
            if self.quiet_s <= 0:
                self.calm.set()
            else:
                self._calm_timer = asyncio.get_running_loop().call_later(self.quiet_s, self.calm.set)

    async def _defer(self) -> None:
        if self.calm.is_set():
            return  # at once, without yielding: a Deployment asked for meanwhile must not overtake it
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.max_defer_s):
                await self.calm.wait()

    async def _acquire(self, priority: int) -> None:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiters, (priority, next(self.seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # granted just as we were cancelled: pass it on
            raise

    def _release(self) -> None:
        while self.waiters:
            _, _, fut = heapq.heappop(self.waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1
