"""The operator's own API calls (lightkube, async): server-side apply of children, pruning, status.

kopf does the watching, indexing and its bookkeeping patches; everything the reconciler writes goes
through here, with the field manager ``kwasi-operator``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from lightkube import AsyncClient, KubeConfig, codecs
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import ConfigMap, PersistentVolumeClaim, Service
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.types import PatchType

from kwasi_operator.spec import FIELD_MANAGER, GROUP, KIND, PLURAL, VERSION, Obj

WasmInference = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
ServiceMonitor = create_namespaced_resource("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors")
PodMonitor = create_namespaced_resource("monitoring.coreos.com", "v1", "PodMonitor", "podmonitors")

MONITOR_CRDS = ("servicemonitors.monitoring.coreos.com", "podmonitors.monitoring.coreos.com")
# Children that exist only for some specs, so they may have to be removed again.
OPTIONAL_KINDS: dict[str, Any] = {
    "PodDisruptionBudget": PodDisruptionBudget,
    "HorizontalPodAutoscaler": HorizontalPodAutoscaler,
    "ServiceMonitor": ServiceMonitor,
    "PodMonitor": PodMonitor,
}
CHILD_KINDS: dict[str, Any] = {"Deployment": Deployment, "Service": Service, **OPTIONAL_KINDS}


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


class Kube:
    """A thin async client for the reconciler."""

    def __init__(self, client: AsyncClient, monitoring_ttl_s: float = 30.0, max_inflight: int = 16) -> None:
        self.client = client
        self.limiter = Limiter(max_inflight)
        self._monitoring: tuple[float, bool] | None = None
        self._monitoring_lock = asyncio.Lock()  # one lookup for a burst of reconciles
        self._monitoring_ttl_s = monitoring_ttl_s

    @classmethod
    def from_env(cls, monitoring_ttl_s: float = 30.0, max_inflight: int = 16) -> Kube:
        """In-cluster ServiceAccount or $KUBECONFIG, like kopf's own login."""
        return cls(AsyncClient(KubeConfig.from_env(), field_manager=FIELD_MANAGER), monitoring_ttl_s, max_inflight)

    async def close(self) -> None:
        await self.client.close()

    async def apply(self, manifest: Obj) -> Obj:
        """Server-side apply (force: this operator owns the fields it renders); returns the live object."""
        obj = codecs.from_dict(manifest)
        prio = PRIO_DEPLOYMENT if manifest["kind"] == "Deployment" else PRIO_CHILD
        async with self.limiter.slot(prio):
            live = await self.client.apply(obj, field_manager=FIELD_MANAGER, force=True)
        out: Obj = live.to_dict()  # type: ignore[no-untyped-call]
        return out

    async def delete_if_present(self, kind: str, name: str, namespace: str) -> bool:
        try:
            async with self.limiter.slot(PRIO_CHILD):
                await self.client.delete(CHILD_KINDS[kind], name, namespace=namespace)
        except ApiError as e:
            if e.status.code == 404:
                return False
            raise
        except httpx2.HTTPStatusError as e:  # a plain-text 404: the resource type itself does not exist
            if e.response.status_code == 404:
                return False
            raise
        return True

    async def exists(self, kind: str, name: str, namespace: str) -> bool:
        res: Any = {"ConfigMap": ConfigMap, "PersistentVolumeClaim": PersistentVolumeClaim}[kind]
        try:
            await self.client.get(res, name, namespace=namespace)
        except ApiError as e:
            if e.status.code == 404:
                return False
            raise
        return True

    async def configmap_has_key(self, name: str, key: str, namespace: str) -> bool | None:
        """None when the ConfigMap is missing, else whether it holds ``key``."""
        try:
            cm = await self.client.get(ConfigMap, name, namespace=namespace)
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise
        return key in (cm.data or {}) or key in (cm.binaryData or {})

    async def monitoring_available(self) -> bool:
        """Whether the Prometheus operator's ServiceMonitor/PodMonitor CRDs exist (cached briefly)."""
        async with self._monitoring_lock:
            return await self._monitoring_lookup()

    async def _monitoring_lookup(self) -> bool:
        now = time.monotonic()
        if self._monitoring is not None and now - self._monitoring[0] < self._monitoring_ttl_s:
            return self._monitoring[1]
        found = True
        for crd in MONITOR_CRDS:
            try:
                await self.client.get(CustomResourceDefinition, crd)
            except ApiError as e:
                if e.status.code not in (403, 404):
                    raise
                found = False
                break
        self._monitoring = (now, found)
        return found

    async def patch_status(self, name: str, namespace: str, status: Obj) -> None:
        async with self.limiter.slot(PRIO_STATUS):
            await self.client.patch(
                WasmInference.Status, name, {"status": status}, namespace=namespace, patch_type=PatchType.MERGE
            )
