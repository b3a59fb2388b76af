"""The operator's own API calls (lightkube, async): server-side apply of children, pruning, status.

kopf does the watching, indexing and its bookkeeping patches; everything the reconciler writes goes
through here, with the field manager ``kwasi-operator``.
"""

from __future__ import annotations

import asyncio
import time
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

from kwasi_operator.kube.limiter import PRIO_CHILD, PRIO_DEPLOYMENT, PRIO_STATUS, Limiter
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
