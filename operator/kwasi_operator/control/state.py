"""What the operator remembers: one :class:`Tracked` per watched WasmInference, and the :class:`Operator`
that holds them with the client, the work queue and kopf's indices.

All of it is in memory and rebuilt from the cluster after a restart: nothing here is a source of truth.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from kwasi_operator import kinds, metrics
from kwasi_operator import status as st
from kwasi_operator.control.workqueue import WorkQueue
from kwasi_operator.kube import ApiError, Kube
from kwasi_operator.spec import Obj

log = logging.getLogger("kwasi_operator")
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class Options:
    resync_s: float = 60.0  # period of the level-based reconcile per object
    backoff_s: float = 1.0  # first retry delay of a spec that cannot be realised; doubles up to MAX_BACKOFF_S
    status_delay_s: float = 0.5  # coalescing window for status updates caused by child events
    max_inflight: int = 32  # concurrent writes to the API server (Deployments first)
    namespaces: tuple[str, ...] = ()  # watched namespaces; none: all
    monitor_labels: Mapping[str, str] = field(default_factory=dict)  # on every ServiceMonitor/PodMonitor


class Retry(Exception):
    """A reconcile that must be tried again after ``delay`` seconds (already reported in status)."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


Version = tuple[str, str]  # (uid, a version that changes only when someone changes the child's spec)
GONE: Version = ("", "")  # the child was deleted


@dataclass
class Tracked:
    """Everything the operator knows about one WasmInference; dropped when the object is deleted."""

    first: str | None = None  # create/update/resume: how this process first saw it, until the first success
    attempted: int | None = None  # generation last handed to reconcile
    reconciled: int | None = None  # generation last reconciled successfully
    failures: int = 0  # consecutive, for the backoff
    ref: Obj | None = None  # apiVersion/kind/name/uid, for Events on the CR
    desired: st.Desired | None = None  # what the last reconcile asked for
    problem: st.Problem | None = None  # why the spec cannot be realised, while it cannot
    published: Obj | None = None  # the status last written
    applied: frozenset[str] | None = None  # kinds applied last time (what pruning compares against)
    seen: dict[str, Version] | None = None  # kind -> version of each child as last applied or watched
    drifted: dict[str, Version] = field(default_factory=dict)  # kind -> version someone else made (or GONE)
    cache_claim: st.ClaimInfo | None = None  # a model cache on the user's own claim, as last read
    publishing: asyncio.Task[None] | None = None  # a debounced status publish, while one is pending


@dataclass
class Indices:
    """kopf's in-memory indices, handed to every handler; the operator reads them instead of the API."""

    deployments: kopf.Index[st.Key, st.DeploymentInfo]
    pods: kopf.Index[st.Key, st.PodInfo]
    services: kopf.Index[st.Key, bool]
    claims: kopf.Index[st.Key, st.ClaimInfo]  # the model-cache claims the operator made
    objects: kopf.Index[st.Key, Obj]  # the WasmInferences themselves (snapshots), for the resync loop
    crds: kopf.Index[str, bool]  # name of another project's CRD we render for -> Established


def backoff(options: Options, failures: int) -> float:
    return float(min(options.backoff_s * 2 ** min(failures, 16), MAX_BACKOFF_S))


@dataclass
class Operator:
    """What the handlers share: options, the client, the work queue, kopf's indices and one
    :class:`Tracked` per object."""

    options: Options
    reconcile: Callable[[Operator, Mapping[str, Any], str], Awaitable[None]]
    kube: Kube | None = None
    objects: dict[st.Key, Tracked] = field(default_factory=dict)
    queue: WorkQueue[st.Key] = field(init=False)
    indices: Indices | None = None
    resync_task: asyncio.Task[None] | None = None
    crd_watches: dict[tuple[str, str | None], asyncio.Task[None]] = field(default_factory=dict)  # (kind, ns)

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self.work)
        metrics.watch_queue(self.queue.depth)
        for child in kinds.CHILDREN:  # at 0 from start-up, so the first repair shows in rate()
            metrics.REPAIRS.labels(kind=child.kind)

    def client(self) -> Kube:
        if self.kube is None:
            raise Retry("the API client is not ready yet", delay=1)
        return self.kube

    def tracked(self, key: st.Key) -> Tracked:
        obj = self.objects.get(key)
        if obj is None:
            obj = self.objects[key] = Tracked()
            metrics.MANAGED.set(len(self.objects))
        return obj

    def latest(self, key: st.Key) -> Obj | None:
        """The newest snapshot of a WasmInference from kopf's index (None once deleted)."""
        store = self.indices.objects.get(key, ()) if self.indices is not None else ()
        return next(iter(store), None)

    def available(self) -> frozenset[str]:
        """Kinds from other projects' CRDs (monitors, …) that are installed and established now."""
        if self.indices is None:
            return frozenset()
        return frozenset(kinds.CRD_KINDS[name].kind for name, ok in self.indices.crds.items()
                         if name in kinds.CRD_KINDS and any(ok))

    def requeue_all(self) -> None:
        """Queue every known object (e.g. a CRD they may render children of appeared or went away)."""
        if self.indices is not None:
            for key in list(self.indices.objects.keys()):
                self.queue.add(key)

    def observe(self, key: st.Key, body: Mapping[str, Any]) -> None:
        """A watch event of the object: queue a reconcile if this generation was not attempted yet.

        Our own status writes (and anything else that leaves the generation alone) queue nothing, so an
        object backing off after a failure is retried by its timer, not by the event its status write made.
        """
        generation = int(body["metadata"].get("generation") or 0)
        obj = self.tracked(key)
        if obj.attempted == generation:
            return
        if obj.reconciled is None and obj.first is None:
            # First sight in this process: what happened while no operator ran, judged from the object.
            observed = (body.get("status") or {}).get("observedGeneration")
            obj.first = "create" if observed is None else "resume" if observed == generation else "update"
        self.queue.add(key)

    async def work(self, key: st.Key) -> None:
        """One queued reconcile of the newest snapshot; schedules its own retry on failure."""
        body = self.latest(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # deleted meanwhile, or being deleted: the garbage collector takes the children
        obj = self.tracked(key)
        generation = int(body["metadata"].get("generation") or 0)
        obj.attempted = generation
        if obj.first is not None:
            trigger = obj.first
        elif obj.reconciled != generation:
            trigger = "update"
        else:
            trigger = "drift" if obj.drifted else "resync"
        try:
            await self.reconcile(self, body, trigger)
        except Retry as e:
            self.queue.add(key, e.delay)
            return
        except Exception as e:  # logged and retried: one bad object never stops the operator
            delay = backoff(self.options, obj.failures)
            obj.failures += 1
            log.warning("%s/%s: %s reconcile failed, retry in %g s: %s", *key, trigger, delay, e,
                        exc_info=not isinstance(e, ApiError))
            self.queue.add(key, delay)
            return
        obj.first = None
        obj.reconciled = generation

    def forget(self, key: st.Key) -> None:
        """The object is gone: drop what was known about it, its queued work and its pending publish."""
        obj = self.objects.pop(key, None)
        if obj is not None and obj.publishing is not None:
            obj.publishing.cancel()
        self.queue.forget(key)
        metrics.MANAGED.set(len(self.objects))
        metrics.forget_replicas(*key)

    def event(self, key: st.Key, type_: str, reason: str, message: str) -> None:
        obj = self.objects.get(key)
        if obj is not None and obj.ref is not None:
            kopf.event(cast(kopf.Body, obj.ref), type=type_, reason=reason, message=message[:1000])
