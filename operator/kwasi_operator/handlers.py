"""kopf handlers: what the operator watches, and how each watch event reaches the controller.

- every watch event of a WasmInference whose generation was not yet attempted (a create, an update, or
  each object listed when the operator starts: a resume) queues its key on the controller's work queue
  (:mod:`kwasi_operator.control`); the resync loop queues every object once per period.
- indices of the operator's Deployments and pods feed ``status`` without API calls; events on them
  re-publish the owner's status (Ready, Scheduled=False/InsufficientGPU, …).

Watching handlers only, no kopf create/update/resume handlers: those make kopf patch every object with
its diff-base and progress annotations (a write, and one more watch event, per object and change), and
kopf timers add a finalizer. Here kopf writes nothing to WasmInferences; what a restart needs is
derived from the objects themselves (``status.observedGeneration``).

Handlers are registered on an explicit ``kopf.OperatorRegistry`` by :func:`register`, closing over one
:class:`~kwasi_operator.control.state.Operator`, so there is no import-time global state.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kwasi_operator import kinds
from kwasi_operator import status as st
from kwasi_operator.control import drift
from kwasi_operator.control.publish import publish_soon
from kwasi_operator.control.reconcile import reconcile
from kwasi_operator.control.resync import resync_loop
from kwasi_operator.control.state import Indices, Operator, Options
from kwasi_operator.kube import Kube
from kwasi_operator.kube.incluster import login_in_cluster
from kwasi_operator.render import MANAGED_BY, owner_key
from kwasi_operator.spec import Obj


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf builds a diff base (a deep copy) of every watched object on every event, for create/update
    handlers; this operator has none, so it builds nothing and stores nothing."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def _snapshot(body: Mapping[str, Any]) -> Obj:
    """What reconcile needs of a WasmInference, copied out of kopf's live body (the status too: a restarted
    operator compares its first status with what the last one wrote, and writes nothing if they agree)."""
    meta = body["metadata"]
    return {"apiVersion": body["apiVersion"], "kind": body["kind"],
            "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "generation", "deletionTimestamp")},
            "spec": copy.deepcopy(dict(body["spec"])),
            "status": copy.deepcopy(dict(body.get("status") or {}))}


def _established(body: Mapping[str, Any]) -> bool:
    """Whether objects of the CRD's kind can be written: established and not being deleted."""
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conds = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conds)


def register(registry: kopf.OperatorRegistry, options: Options) -> Operator:
    """Register every handler on ``registry``; returns the shared state (for tests and the CLI)."""
    op = Operator(options, reconcile)
    wasminferences = (kinds.WASM_INFERENCE.group, kinds.WASM_INFERENCE.version, kinds.WASM_INFERENCE.plural)
    crds = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.diffbase_storage = NoDiffBase()
        # kopf watches only built-in kinds and WasmInferences (a watched kind that vanishes is fatal to kopf):
        # no scanning for new CRDs. Other projects' kinds are known from the CRD index below and watched by
        # control.drift, which survives their CRDs going away.
        settings.scanning.disabled = True
        # Events are posted explicitly (kopf.event) for decisions; kopf's own INFO chatter is not.
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        # Each object's events are handled after this quiet period; kopf's 0.1 s default adds to every create.
        settings.batching.batch_window = 0.02
        settings.networking.request_timeout = 60
        op.kube = await Kube.from_env(max_inflight=options.max_inflight)

    @kopf.on.login(id="login", registry=registry)
    def login(**kw: Any) -> kopf.ConnectionInfo | None:
        # The same sources as the operator's own client: the pod's ServiceAccount, else $KUBECONFIG.
        return login_in_cluster(**kw) or kopf.login_with_kubeconfig(**kw)

    @kopf.on.cleanup(id="close", registry=registry)
    async def close(**_: Any) -> None:
        if op.resync_task is not None:
            op.resync_task.cancel()
        for task in op.crd_watches.values():
            task.cancel()
        await op.queue.close()
        if op.kube is not None:
            await op.kube.close()

    @kopf.index("apps", "v1", "deployments", id="kwasi_deployments", labels=MANAGED_BY, registry=registry)
    async def kwasi_deployments(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
        key = owner_key(namespace, labels)
        return {key: st.DeploymentInfo.from_body(body)} if key else None

    @kopf.index("", "v1", "pods", id="kwasi_pods", labels=MANAGED_BY, registry=registry)
    async def kwasi_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
        key = owner_key(namespace, labels)
        return {key: st.PodInfo.from_body(body)} if key else None

    @kopf.index("", "v1", "services", id="kwasi_services", labels=MANAGED_BY, registry=registry)
    async def kwasi_services(namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
        key = owner_key(namespace, labels)
        return {key: True} if key else None

    @kopf.index("", "v1", "persistentvolumeclaims", id="kwasi_claims", labels=MANAGED_BY, registry=registry)
    async def kwasi_claims(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
        key = owner_key(namespace, labels)
        return {key: st.ClaimInfo.from_body(body)} if key else None

    @kopf.index(*wasminferences, id="kwasi_objects", registry=registry)
    async def kwasi_objects(namespace: str | None, name: str | None, body: kopf.Body, **_: Any) -> Any:
        return {(namespace, name): _snapshot(body)} if namespace and name else None

    def ours(name: str | None, **_: Any) -> bool:
        return name in kinds.CRD_KINDS

    @kopf.index(*crds, id="kwasi_crds", when=ours, registry=registry)
    async def kwasi_crds(name: str | None, body: kopf.Body, **_: Any) -> Any:
        return {name: _established(body)}

    def bind(kw: Mapping[str, Any]) -> None:
        op.indices = Indices(kw["kwasi_deployments"], kw["kwasi_pods"], kw["kwasi_services"], kw["kwasi_claims"],
                             kw["kwasi_objects"], kw["kwasi_crds"])
        if op.resync_task is None:  # started from a handler: its context carries kopf's event poster
            op.resync_task = asyncio.create_task(resync_loop(op))
            drift.sync_watches(op)

    @kopf.on.event(*crds, id="crd_event", when=ours, registry=registry)
    async def crd_event(**kw: Any) -> None:
        bind(kw)
        drift.sync_watches(op)
        op.requeue_all()  # a kind to render appeared, or went away (its children went with it)

    def watch_child(kind: kinds.Kind) -> None:
        @kopf.on.event(kind.group, kind.version, kind.plural, id=f"{kind.plural}_event", labels=MANAGED_BY,
                       registry=registry)
        async def child_event(type: str | None, namespace: str | None, labels: kopf.Labels, body: kopf.Body,
                              **kw: Any) -> None:
            bind(kw)
            key = owner_key(namespace, labels)
            if key is None:
                return
            drift.child_event(op, key, kind.kind, type, body)
            if kind in (kinds.DEPLOYMENT, kinds.SERVICE, kinds.PERSISTENT_VOLUME_CLAIM):  # what status shows
                publish_soon(op, key)

    for child in kinds.CHILDREN:
        if not child.crd:
            watch_child(child)

    @kopf.on.event("", "v1", "pods", id="pod_event", labels=MANAGED_BY, registry=registry)
    async def pod_event(namespace: str | None, labels: kopf.Labels, **kw: Any) -> None:
        bind(kw)
        key = owner_key(namespace, labels)
        if key is not None:
            publish_soon(op, key)

    @kopf.on.event(*wasminferences, id="wasminference_event", registry=registry)
    async def wasminference_event(type: str | None, namespace: str | None, name: str | None, body: kopf.Body,
                                  **kw: Any) -> None:
        bind(kw)
        if not (namespace and name):
            return
        if type == "DELETED":
            op.forget((namespace, name))
        else:  # None (listed at start-up), ADDED, MODIFIED
            op.observe((namespace, name), body)

    return op
