"""A bounded, prioritised gate for the operator's writes to the API server."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
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
        self.urgent_at = -math.inf  # loop time a Deployment write was last asked for or finished

    @contextlib.asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        urgent = priority == PRIO_DEPLOYMENT
        if urgent:
            self.urgent += 1
            self.urgent_at = loop.time()
        else:
            await self._defer(loop)
        try:
            await self._acquire(priority)
            try:
                yield
            finally:
                self._release()
        finally:
            if urgent:
                self.urgent -= 1
                self.urgent_at = loop.time()

    async def _defer(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = loop.time() + self.max_defer_s
        while (now := loop.time()) < deadline:
            quiet_for = now - self.urgent_at if self.urgent == 0 else 0.0
            if quiet_for >= self.quiet_s:
                return
            await asyncio.sleep(min(self.quiet_s - quiet_for, deadline - now))

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
