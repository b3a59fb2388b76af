"""The operator's own API calls, on the official ``kubernetes`` client's asyncio flavour
(``kubernetes.aio``: aiohttp underneath, like kopf, so no call blocks the event loop).

Server-side apply of children (field manager ``kwasi-operator``, force: the operator owns the fields it
renders), pruning, the few reads the preflight needs, and status patches. kopf does the watching and
indexing. Every write goes through the :class:`~kwasi_operator.kube.limiter.Limiter`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config
from kubernetes.aio import watch as k8s_watch
from kubernetes.aio.client.exceptions import ApiException

from kwasi_operator import kinds
from kwasi_operator.kube.errors import ApiError
from kwasi_operator.kube.limiter import PRIO_CHILD, PRIO_DEPLOYMENT, PRIO_STATUS, Limiter
from kwasi_operator.spec import FIELD_MANAGER, Obj

APPLY = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON
MERGE = "application/merge-patch+json"


class Kube:
    """A thin async client for the reconciler: dicts in, dicts out (no model classes)."""

    def __init__(self, api: k8s.ApiClient, max_inflight: int = 16) -> None:
        self.api = api
        self.limiter = Limiter(max_inflight)

    @classmethod
    async def from_env(cls, max_inflight: int = 16) -> Kube:
        """In-cluster ServiceAccount (its token re-read as the kubelet rotates it), else $KUBECONFIG."""
        config = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            await k8s_config.load_kube_config(client_configuration=config)  # type: ignore[no-untyped-call]
        config.connection_pool_maxsize = max(max_inflight * 2, 16)
        # The client's aiohttp session trusts the environment by default: every request then looks up proxy
        # variables and ~/.netrc in a worker thread (a thread hop per call, a measurable share of the
        # operator's CPU under a burst). The API server is reached directly, or through the kubeconfig's
        # proxy-url, which the client passes on explicitly.
        config.client_session_kwargs = {"trust_env": False}
        return cls(k8s.ApiClient(config), max_inflight)

    async def close(self) -> None:
        await self.api.close()  # type: ignore[no-untyped-call]

    async def _call(self, method: str, path: str, body: Any = None, query: Sequence[tuple[str, str]] = (),
                    content_type: str | None = None) -> Obj:
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        request = await self.api.param_serialize(method=method, resource_path=path, query_params=list(query),
                                                 header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            response = await self.api.call_api(*request)
            await response.read()  # type: ignore[no-untyped-call]
            out = self.api.response_deserialize(response, {"2XX": "object"}).data
        except ApiException as e:
            raise ApiError.from_exception(e) from None
        return out if isinstance(out, dict) else {}

    async def apply(self, manifest: Obj) -> Obj:
        """Server-side apply; returns the live object."""
        kind = kinds.BY_KIND[manifest["kind"]]
        meta = manifest["metadata"]
        prio = PRIO_DEPLOYMENT if kind is kinds.DEPLOYMENT else PRIO_CHILD
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        async with self.limiter.slot(prio):
            return await self._call("PATCH", kind.path(meta["namespace"], meta["name"]), manifest, query, APPLY)

    async def delete_owned(self, kind: str, name: str, namespace: str, owner_uid: str) -> bool:
        """Delete the child if it exists and ``owner_uid`` controls it (never an object of the same name that
        someone else made, e.g. their own claim); returns whether it deleted."""
        child = await self.get(kind, name, namespace)
        owners = (child or {}).get("metadata", {}).get("ownerReferences") or []
        if child is None or not any(o.get("uid") == owner_uid and o.get("controller") for o in owners):
            return False
        uid = child["metadata"]["uid"]
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background",
                "preconditions": {"uid": uid}}  # the very object checked above
        try:
            async with self.limiter.slot(PRIO_CHILD):
                await self._call("DELETE", kinds.BY_KIND[kind].path(namespace, name), body)
        except ApiError as e:
            if e.code in (404, 409):  # gone meanwhile, or replaced by another object of that name
                return False
            raise
        return True

    async def get(self, kind: str, name: str, namespace: str) -> Obj | None:
        try:
            return await self._call("GET", kinds.BY_KIND[kind].path(namespace, name))
        except ApiError as e:
            if e.code == 404:  # no such object, or the resource type itself does not exist
                return None
            raise

    async def exists(self, kind: str, name: str, namespace: str) -> bool:
        return await self.get(kind, name, namespace) is not None

    async def configmap_has_key(self, name: str, key: str, namespace: str) -> bool | None:
        """None when the ConfigMap is missing, else whether it holds ``key``."""
        cm = await self.get("ConfigMap", name, namespace)
        if cm is None:
            return None
        return key in (cm.get("data") or {}) or key in (cm.get("binaryData") or {})

    async def watch(self, kind: kinds.Kind, label_selector: str, namespace: str | None = None
                    ) -> AsyncIterator[tuple[str, Obj]]:
        """(event type, object) of a custom resource kind, forever (the client re-watches from the last
        resourceVersion). Ends with ApiError 404 when the kind itself goes away."""
        custom = k8s.CustomObjectsApi(self.api)
        watch = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        if namespace is None:
            stream = watch.stream(custom.list_cluster_custom_object,  # type: ignore[no-untyped-call]
                                  kind.group, kind.version, kind.plural, label_selector=label_selector)
        else:
            stream = watch.stream(custom.list_namespaced_custom_object,  # type: ignore[no-untyped-call]
                                  kind.group, kind.version, namespace, kind.plural, label_selector=label_selector)
        try:
            async for event in stream:
                yield event["type"], event["raw_object"]
        except ApiException as e:
            raise ApiError.from_exception(e) from None

    async def patch_status(self, name: str, namespace: str, status: Obj) -> None:
        path = kinds.WASM_INFERENCE.path(namespace, name, "status")
        async with self.limiter.slot(PRIO_STATUS):
            await self._call("PATCH", path, {"status": status}, content_type=MERGE)
