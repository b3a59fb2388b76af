"""The operator's work queue: one run per key at a time, coalesced re-runs, earliest retry timer wins."""

from __future__ import annotations

import asyncio

from kwasi_operator import metrics
from kwasi_operator.control.workqueue import WorkQueue


class Recorder:
    """A work function that logs (key, start, end) and can be held open by an event."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.active: dict[str, int] = {}
        self.most_at_once = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, key: str) -> None:
        self.active[key] = self.active.get(key, 0) + 1
        self.most_at_once = max(self.most_at_once, self.active[key])
        self.runs.append(key)
        await self.gate.wait()
        self.active[key] -= 1


async def settle(queue: WorkQueue[str]) -> None:
    for _ in range(200):
        if len(queue) == 0:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("work queue did not settle")


def test_adds_during_a_run_coalesce_into_one_more_run() -> None:
    async def main() -> None:
        work = Recorder()
        queue = WorkQueue(work)
        work.gate.clear()
        queue.add("a")
        await asyncio.sleep(0)
        for _ in range(5):  # a burst of events while "a" is being reconciled
            queue.add("a")
        queue.add("b")
        await asyncio.sleep(0.01)
        assert work.runs == ["a", "b"] and work.most_at_once == 1
        work.gate.set()
        await settle(queue)
        assert sorted(work.runs) == ["a", "a", "b"]  # exactly one more run of "a", none of "b"
        assert work.most_at_once == 1

    asyncio.run(main())


def test_delayed_add_keeps_the_earliest_timer_and_forget_cancels_it() -> None:
    async def main() -> None:
        work = Recorder()
        queue = WorkQueue(work)
        queue.add("a", delay=10.0)
        queue.add("a", delay=0.02)  # earlier: replaces the 10 s timer
        queue.add("a", delay=5.0)  # later: ignored
        assert queue.pending("a") and work.runs == []
        await asyncio.sleep(0.06)
        await settle(queue)
        assert work.runs == ["a"] and not queue.pending("a")
        queue.add("b", delay=0.02)
        queue.forget("b")
        await asyncio.sleep(0.05)
        assert work.runs == ["a"] and not queue.pending("b")

    asyncio.run(main())


def test_close_cancels_runs_and_timers() -> None:
    async def main() -> None:
        work = Recorder()
        queue = WorkQueue(work)
        work.gate.clear()
        queue.add("a")
        queue.add("b", delay=0.01)
        await asyncio.sleep(0)
        await queue.close()
        await asyncio.sleep(0.03)
        assert work.runs == ["a"] and len(queue) == 0 and not queue.pending("b")

    asyncio.run(main())


def test_depth_by_state_is_what_the_metric_exports() -> None:
    async def main() -> None:
        work = Recorder()
        queue = WorkQueue(work)
        metrics.watch_queue(queue.depth)

        def exported() -> dict[str, float | None]:
            return {s: metrics.REGISTRY.get_sample_value("kwasi_operator_workqueue_depth", {"state": s})
                    for s in metrics.QUEUE_STATES}

        work.gate.clear()
        queue.add("a")
        queue.add("b")
        await asyncio.sleep(0)
        queue.add("a")  # due again after the current run
        queue.add("c", delay=10.0)
        assert exported() == {"running": 2, "queued": 1, "retrying": 1}
        work.gate.set()
        queue.forget("c")
        await settle(queue)
        assert exported() == {"running": 0, "queued": 0, "retrying": 0}

    asyncio.run(main())
