"""The operator's write limiter: bounded writes in flight, Deployments first, the rest after a quiet spell."""

from __future__ import annotations

import asyncio

from kwasi_operator.kube import PRIO_CHILD, PRIO_DEPLOYMENT, PRIO_STATUS, Limiter


def test_bounded_and_served_by_priority_then_arrival() -> None:
    async def main() -> list[str]:
        limiter = Limiter(1, quiet_s=0.0)
        order: list[str] = []
        hold = asyncio.Event()

        async def write(name: str, prio: int, wait: asyncio.Event | None = None) -> None:
            async with limiter.slot(prio):
                order.append(name)
                if wait is not None:
                    await wait.wait()

        first = asyncio.create_task(write("first", PRIO_CHILD, hold))
        await asyncio.sleep(0.01)
        rest = [asyncio.create_task(write(n, p)) for n, p in (
            ("status", PRIO_STATUS), ("svc-1", PRIO_CHILD), ("dep-1", PRIO_DEPLOYMENT), ("svc-2", PRIO_CHILD),
            ("dep-2", PRIO_DEPLOYMENT))]
        await asyncio.sleep(0.01)
        assert order == ["first"]  # one slot
        hold.set()
        await asyncio.gather(first, *rest)
        return order

    assert asyncio.run(main()) == ["first", "dep-1", "dep-2", "svc-1", "svc-2", "status"]


def test_other_writes_wait_for_a_quiet_spell_after_deployments() -> None:
    async def main() -> dict[str, float]:
        limiter = Limiter(8, quiet_s=0.05, max_defer_s=5.0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        done: dict[str, float] = {}

        async def write(name: str, prio: int, start: float, hold: float = 0.0) -> None:
            await asyncio.sleep(start)
            async with limiter.slot(prio):
                await asyncio.sleep(hold)
            done[name] = loop.time() - t0

        # Deployments trickle in for 0.2 s; the Service asked for at 0.01 s waits until they stop.
        deps = [write(f"dep-{i}", PRIO_DEPLOYMENT, 0.04 * i, hold=0.01) for i in range(6)]
        await asyncio.gather(write("svc", PRIO_CHILD, 0.01), *deps)
        return done

    done = asyncio.run(main())
    last_dep = max(t for name, t in done.items() if name.startswith("dep-"))
    assert done["svc"] >= last_dep + 0.04, done


def test_deferral_is_bounded() -> None:
    async def main() -> float:
        limiter = Limiter(8, quiet_s=10.0, max_defer_s=0.05)
        loop = asyncio.get_running_loop()
        async with limiter.slot(PRIO_DEPLOYMENT):
            t0 = loop.time()
            async with limiter.slot(PRIO_STATUS):  # a Deployment in flight, but not forever
                return loop.time() - t0

    assert 0.04 <= asyncio.run(main()) < 1.0
