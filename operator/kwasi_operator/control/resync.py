"""The level-based loop: every known object is queued once per resync period."""

from __future__ import annotations

import asyncio

from kwasi_operator.control.state import Operator


async def resync_loop(op: Operator) -> None:
    """Queue every known object once per resync period, spread over the period so that a thousand objects
    make a steady trickle of (mostly no-op) applies rather than a burst.

    A loop over kopf's index of the objects, not a kopf timer: kopf puts a finalizer on objects with
    timers, and a finalizer would make deletion wait for a running operator.
    """
    while True:
        keys = list(op.indices.objects.keys()) if op.indices is not None else []
        if not keys:
            await asyncio.sleep(op.options.resync_s)
            continue
        step = op.options.resync_s / len(keys)
        for key in keys:
            await asyncio.sleep(step)
            if not op.queue.pending(key) and op.latest(key) is not None:  # a failing one retries on its timer
                op.queue.add(key)
