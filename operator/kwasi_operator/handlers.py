"""kopf handlers: reconcile WasmInference objects into their children and report what the cluster did.

- every watch event of a WasmInference whose generation was not yet attempted (a create, an update, or
  each object listed when the operator starts: a resume) queues its key on a :class:`WorkQueue`; a run
  of ``reconcile`` checks what the spec depends on, renders, server-side applies the children (owned by
  the CR, so the garbage collector removes them with it), prunes children the spec no longer asks for
  and publishes status. Failures are retried from the queue with exponential backoff.
- a resync loop queues every object once per period (level-based: a child edited or deleted by hand
  comes back).
- indices of the operator's Deployments and pods feed ``status`` without API calls; events on them
  re-publish the owner's status (Ready, Scheduled=False/InsufficientGPU, …).

Watching handlers only, no kopf create/update/resume handlers: those make kopf patch every object with
its diff-base and progress annotations (a write, and one more watch event, per object and change), and
kopf timers add a finalizer. Here kopf writes nothing to WasmInferences; what a restart needs is
derived from the objects themselves (``status.observedGeneration``).

Handlers are registered on an explicit ``kopf.OperatorRegistry`` by :func:`register`, closing over one
:class:`Operator` (options, client, bookkeeping), so there is no import-time global state.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from lightkube.core.exceptions import ApiError

from kwasi_operator import metrics
from kwasi_operator import status as st
from kwasi_operator.children import INSTANCE_LABEL, render, selector_string
from kwasi_operator.kube import OPTIONAL_KINDS, Kube
from kwasi_operator.spec import FIELD_MANAGER, GROUP, PLURAL, VERSION, Obj, Spec
from kwasi_operator.workqueue import WorkQueue

log = logging.getLogger("kwasi_operator")
MANAGED = {"app.kubernetes.io/managed-by": FIELD_MANAGER}
MONITOR_KINDS = {"ServiceMonitor", "PodMonitor"}
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class Options:
    resync_s: float = 60.0  # period of the level-based reconcile per object
    backoff_s: float = 1.0  # first retry delay of a spec that cannot be realised; doubles up to MAX_BACKOFF_S
    status_delay_s: float = 0.5  # coalescing window for status updates caused by child events
    max_inflight: int = 32  # concurrent writes to the API server (Deployments first)


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf builds a diff base (a deep copy) of every watched object on every event, for create/update
    handlers; this operator has none, so it builds nothing and stores nothing."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class Retry(Exception):
    """A reconcile that must be tried again after ``delay`` seconds (already reported in status)."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass
class Operator:
    """What the handlers share: the client and per-object bookkeeping (in memory; rebuilt on resume)."""

    options: Options
    kube: Kube | None = None
    queue: WorkQueue[st.Key] = field(init=False)
    attempted: dict[st.Key, int] = field(default_factory=dict)  # generation last handed to reconcile
    reconciled: dict[st.Key, int] = field(default_factory=dict)  # generation last reconciled successfully
    first: dict[st.Key, str] = field(default_factory=dict)  # create/update/resume, until the first success
    desired: dict[st.Key, st.Desired] = field(default_factory=dict)
    refs: dict[st.Key, Obj] = field(default_factory=dict)  # for Events on the CR
    problems: dict[st.Key, st.Problem] = field(default_factory=dict)
    published: dict[st.Key, Obj] = field(default_factory=dict)  # last status written
    applied: dict[st.Key, frozenset[str]] = field(default_factory=dict)  # kinds applied last time
    seen: dict[st.Key, dict[str, tuple[str, str]]] = field(default_factory=dict)  # kind -> (uid, version)
    failures: dict[st.Key, int] = field(default_factory=dict)  # consecutive, for the backoff
    pending: dict[st.Key, asyncio.Task[None]] = field(default_factory=dict)  # debounced status publishes
    indices: Indices | None = None
    resync_task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self.work)

    def client(self) -> Kube:
        if self.kube is None:
            raise Retry("the API client is not ready yet", delay=1)
        return self.kube

    def latest(self, key: st.Key) -> Obj | None:
        """The newest snapshot of a WasmInference from kopf's index (None once deleted)."""
        store = self.indices.objects.get(key, ()) if self.indices is not None else ()
        return next(iter(store), None)

    def observe(self, key: st.Key, body: Mapping[str, Any]) -> None:
        """A watch event of the object: queue a reconcile if this generation was not attempted yet.

        Our own status writes (and anything else that leaves the generation alone) queue nothing, so an
        object backing off after a failure is retried by its timer, not by the event its status write made.
        """
        generation = int(body["metadata"].get("generation") or 0)
        if self.attempted.get(key) == generation:
            return
        if key not in self.reconciled and key not in self.first:
            # First sight in this process: what happened while no operator ran, judged from the object.
            observed = (body.get("status") or {}).get("observedGeneration")
            self.first[key] = "create" if observed is None else "resume" if observed == generation else "update"
        self.queue.add(key)

    async def work(self, key: st.Key) -> None:
        """One queued reconcile of the newest snapshot; schedules its own retry on failure."""
        body = self.latest(key)
        if body is None:
            return  # deleted meanwhile
        generation = int(body["metadata"].get("generation") or 0)
        self.attempted[key] = generation
        trigger = self.first.get(key) or ("resync" if self.reconciled.get(key) == generation else "update")
        try:
            await reconcile(self, body, trigger)
        except Retry as e:
            self.queue.add(key, e.delay)
            return
        except Exception as e:  # logged and retried: one bad object never stops the operator
            delay = backoff(self.options, self.failures.get(key, 0))
            self.failures[key] = self.failures.get(key, 0) + 1
            log.warning("%s/%s: %s reconcile failed, retry in %g s: %s", *key, trigger, delay, e,
                        exc_info=not isinstance(e, ApiError))
            self.queue.add(key, delay)
            return
        self.first.pop(key, None)
        self.reconciled[key] = generation

    def forget(self, key: st.Key) -> None:
        tables: tuple[dict[st.Key, Any], ...] = (
            self.desired, self.refs, self.problems, self.published, self.applied, self.seen, self.failures,
            self.attempted, self.reconciled, self.first)
        for table in tables:
            table.pop(key, None)
        self.queue.forget(key)
        metrics.MANAGED.set(len(self.desired))


# ------------------------------------------------------------------------------------------ helpers


def backoff(options: Options, failures: int) -> float:
    return float(min(options.backoff_s * 2 ** min(failures, 16), MAX_BACKOFF_S))


def event(op: Operator, key: st.Key, type_: str, reason: str, message: str) -> None:
    ref = op.refs.get(key)
    if ref is not None:
        kopf.event(cast(kopf.Body, ref), type=type_, reason=reason, message=message[:1000])


def _ref(body: Mapping[str, Any]) -> Obj:
    meta = body["metadata"]
    return {"apiVersion": body["apiVersion"], "kind": body["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]}}


def describe(spec: Spec) -> str:
    """One line for the Created/Updated events: what was asked of the scheduler."""
    auto = spec.autoscaling
    parts = [f"{spec.replicas} replica(s)" if auto is None else
             f"autoscaling {auto.min_replicas}-{auto.max_replicas} on {auto.metric}"]
    if spec.gpu is not None:
        gpu = f"{spec.gpu.count}x {spec.gpu.resource_name} per replica"
        if spec.gpu.product:
            gpu += f" on {spec.gpu.product}"
        if spec.gpu.memory_mib:
            gpu += f" with >= {spec.gpu.memory_mib} MiB"
        parts.append(gpu)
    else:
        parts.append("CPU only")
    parts.append(f"models: {', '.join(m.name for m in spec.models) or 'none'}")
    return "; ".join(parts)


async def preflight(kube: Kube, namespace: str, spec: Spec) -> st.Problem | None:
    """What the spec refers to in the namespace and must exist before pods can start."""
    cm = spec.module.get("configMap")
    if cm:
        has_key = await kube.configmap_has_key(cm["name"], cm["key"], namespace)
        if has_key is None:
            return st.Problem("ConfigMapNotFound", f"module ConfigMap {namespace}/{cm['name']} does not exist")
        if not has_key:
            return st.Problem("ConfigMapKeyNotFound", f"module ConfigMap {namespace}/{cm['name']} has no key "
                                                      f"{cm['key']!r}")
    for model in spec.models:
        claim = model.source.pvc_claim
        if claim and not await kube.exists("PersistentVolumeClaim", claim, namespace):
            return st.Problem("PersistentVolumeClaimNotFound",
                              f"model {model.name!r}: PersistentVolumeClaim {namespace}/{claim} does not exist")
    return None


def namespace_terminating(e: ApiError) -> bool:
    """A 403 from the NamespaceLifecycle admission plugin: the namespace is being deleted."""
    details = e.status.details
    return e.status.code == 403 and details is not None and any(
        c.reason == "NamespaceTerminating" for c in details.causes or ())


def rejected(spec: Spec, e: ApiError) -> st.Problem:
    """The problem to report for a child the API server refused (400/403/422)."""
    message = e.status.message or str(e)
    if e.status.code == 403:
        return st.Problem("Forbidden", message)
    kind = e.status.details.kind if e.status.details else None
    if kind == "HorizontalPodAutoscaler" and spec.autoscaling is not None and spec.autoscaling.min_replicas == 0:
        return st.Problem("ScaleToZeroUnavailable", "spec.autoscaling.minReplicas 0 needs the HPAScaleToZero "
                              "feature gate on kube-apiserver and kube-controller-manager (or set it to 1); the "
                              f"API server said: {message}")
    return st.Problem("InvalidChild", message)


def _version(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(uid, a version that changes only when someone changes the object's spec)."""
    meta = obj.get("metadata", {})
    gen = meta.get("generation")
    # Deployments, PDBs and HPAs bump generation on spec changes only (status writes bump resourceVersion).
    return meta.get("uid", ""), f"g{gen}" if gen else f"rv{meta.get('resourceVersion', '')}"


# ---------------------------------------------------------------------------------------- reconcile


async def reconcile(op: Operator, body: Mapping[str, Any], trigger: str) -> None:
    """Make the children match the spec, then publish status. Idempotent; safe to run at any time
    (the work queue runs one at a time per object)."""
    meta = body["metadata"]
    key: st.Key = (meta["namespace"], meta["name"])
    t0 = time.perf_counter()
    result = "error"
    try:
        await _reconcile(op, key, body, trigger)
        result = "ok"
    except Retry:
        result = "retry"
        raise
    except ApiError as e:
        metrics.ERRORS.labels(reason=f"api_{e.status.code}").inc()
        raise
    except Exception as e:
        metrics.ERRORS.labels(reason=type(e).__name__).inc()
        raise
    finally:
        metrics.RECONCILES.labels(trigger=trigger, result=result).inc()
        metrics.LATENCY.labels(trigger=trigger).observe(time.perf_counter() - t0)


async def _reconcile(op: Operator, key: st.Key, body: Mapping[str, Any], trigger: str) -> None:
    namespace, name = key
    kube = op.client()
    spec = Spec.parse(body["spec"])
    op.refs[key] = _ref(body)
    op.desired[key] = st.Desired(
        generation=int(body["metadata"].get("generation") or 0),
        replicas=None if spec.autoscaling else spec.replicas,
        selector=selector_string(name),
        endpoint=st.endpoint(name, namespace, spec.port),
        gpu_resource=spec.gpu.resource_name if spec.gpu else None,
    )
    metrics.MANAGED.set(len(op.desired))

    problem = await preflight(kube, namespace, spec)
    if problem is not None:
        await _fail(op, key, problem)

    manifests = render(name, namespace, spec, await kube.monitoring_available())
    kopf.append_owner_reference(manifests, owner=cast(kopf.Body, body))
    try:
        # The Deployment first (pods start sooner); then the rest together.
        live = [await kube.apply(manifests[0])]
        live += await asyncio.gather(*(kube.apply(m) for m in manifests[1:]))
    except ApiError as e:
        if namespace_terminating(e):  # the object goes with its namespace: nothing to report, nothing to fix
            raise Retry(f"namespace {namespace} is being deleted", delay=MAX_BACKOFF_S) from e
        if e.status.code in (400, 403, 422):  # not transient: the spec (or the RBAC) must change first
            await _fail(op, key, rejected(spec, e))
        raise
    op.failures.pop(key, None)
    if op.problems.pop(key, None) is not None:
        event(op, key, "Normal", "Resolved", "the spec can be realised again")

    await _prune(op, key, {m["kind"] for m in manifests}, trigger)
    _report_changes(op, key, live, spec, trigger)
    publish_soon(op, key)  # with the burst of Deployment/pod events that follows


async def _fail(op: Operator, key: st.Key, problem: st.Problem) -> None:
    """Report a spec that cannot be realised now, then retry with backoff (from the work queue)."""
    if op.problems.get(key) != problem:
        event(op, key, "Warning", problem.reason, problem.message)
        log.warning("%s/%s: %s: %s", *key, problem.reason, problem.message)
    op.problems[key] = problem
    metrics.ERRORS.labels(reason=problem.reason).inc()
    await publish(op, key)
    failures = op.failures.get(key, 0)
    op.failures[key] = failures + 1
    delay = backoff(op.options, failures)
    raise Retry(f"{problem.reason}: {problem.message} (retry in {delay:g} s)", delay=delay)


async def _prune(op: Operator, key: st.Key, wanted: set[str], trigger: str) -> None:
    """Delete optional children the spec no longer asks for (e.g. the PDB when replicas drop to 1)."""
    namespace, name = key
    before = op.applied.get(key)
    if before is None:  # first sight in this process: anything may be left from an older spec
        candidates = set() if trigger == "create" else set(OPTIONAL_KINDS) - wanted
    else:
        candidates = set(before) - wanted
    if candidates & MONITOR_KINDS and not await op.client().monitoring_available():
        candidates -= MONITOR_KINDS  # the types do not exist, so neither can such children
    for kind in sorted(candidates):
        if await op.client().delete_if_present(kind, name, namespace):
            event(op, key, "Normal", "Pruned", f"deleted {kind} {name}: the spec no longer asks for it")
    op.applied[key] = frozenset(wanted)


def _report_changes(op: Operator, key: st.Key, live: Sequence[Obj], spec: Spec, trigger: str) -> None:
    """Events for decisions: children created/updated, or repaired after someone changed them."""
    now = {obj["kind"]: _version(obj) for obj in live}
    before = op.seen.get(key)
    op.seen[key] = now
    kinds = ", ".join(now)
    if trigger == "create":
        event(op, key, "Normal", "Created", f"applied {kinds}: {describe(spec)}")
    elif trigger == "update":
        event(op, key, "Normal", "Updated", f"applied {kinds}: {describe(spec)}")
    elif before is not None:  # resync: nothing should have changed unless someone else did it
        for kind, (uid, version) in now.items():
            old = before.get(kind)
            if old is None or old == (uid, version):
                continue
            what = "re-created (it was deleted)" if old[0] != uid else "reverted (it was edited)"
            metrics.REPAIRS.labels(kind=kind).inc()
            event(op, key, "Warning", "Repaired", f"{kind} {key[1]} {what}")
            log.info("%s/%s: repaired %s: %s", *key, kind, what)


def publish_soon(op: Operator, key: st.Key) -> None:
    """Publish after a short delay, once for a burst of child events (a rollout is a dozen of them)."""
    if key in op.pending:
        return

    async def later() -> None:
        await asyncio.sleep(op.options.status_delay_s)
        op.pending.pop(key, None)
        try:
            await publish(op, key)
        except Exception:  # logged; the next event or resync publishes again
            metrics.ERRORS.labels(reason="status").inc()
            log.exception("%s/%s: status update failed", *key)

    op.pending[key] = asyncio.create_task(later())


async def publish(op: Operator, key: st.Key) -> None:
    """Write status from the indices if it changed; events for the transitions that matter."""
    desired = op.desired.get(key)
    if desired is None or op.kube is None or op.indices is None:
        return
    deployment = next(iter(op.indices.deployments.get(key, ())), None)
    pods = list(op.indices.pods.get(key, []))
    before = op.published.get(key)
    new = st.build(desired, deployment, pods, op.problems.get(key), (before or {}).get("conditions", ()))
    if st.same(before, new):
        return
    try:
        await op.kube.patch_status(key[1], key[0], new)
    except ApiError as e:
        if e.status.code == 404:  # deleted meanwhile
            op.forget(key)
            return
        raise
    op.published[key] = new
    metrics.STATUS_UPDATES.inc()
    _transition_events(op, key, before, new)


def _cond(s: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any]:
    for c in (s or {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def _transition_events(op: Operator, key: st.Key, before: Obj | None, new: Obj) -> None:
    old_sched, sched = _cond(before, "Scheduled"), _cond(new, "Scheduled")
    if sched.get("status") == "False" and old_sched.get("status") != "False":
        event(op, key, "Warning", sched["reason"], sched["message"])
    old_ready, ready = _cond(before, "Ready"), _cond(new, "Ready")
    if ready.get("status") == "True" and old_ready.get("status") != "True":
        event(op, key, "Normal", "Ready", f"{ready['message']}; endpoint {new.get('endpoint')}")


# ------------------------------------------------------------------------------------------ indices


@dataclass
class Indices:
    deployments: kopf.Index[st.Key, st.DeploymentInfo]
    pods: kopf.Index[st.Key, st.PodInfo]
    objects: kopf.Index[st.Key, Obj]  # the WasmInferences themselves, for the resync loop


def _snapshot(body: Mapping[str, Any]) -> Obj:
    """What reconcile needs of a WasmInference, copied out of kopf's live body."""
    meta = body["metadata"]
    observed = (body.get("status") or {}).get("observedGeneration")
    return {"apiVersion": body["apiVersion"], "kind": body["kind"],
            "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "generation")},
            "spec": copy.deepcopy(dict(body["spec"])),
            "status": {} if observed is None else {"observedGeneration": observed}}


async def resync_loop(op: Operator) -> None:
    """Level-based: queue every known object once per resync period, spread over the period so that a
    thousand objects make a steady trickle of (mostly no-op) applies rather than a burst.

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


def _owner_key(namespace: str | None, labels: Mapping[str, str]) -> st.Key | None:
    instance = labels.get(INSTANCE_LABEL)
    return (namespace, instance) if namespace and instance else None


# --------------------------------------------------------------------------------------- registration


def register(registry: kopf.OperatorRegistry, options: Options) -> Operator:
    """Register every handler on ``registry``; returns the shared state (for tests and the CLI)."""
    op = Operator(options)
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.diffbase_storage = NoDiffBase()
        # No CRD watching: least privilege (the CRD is installed before the operator starts).
        settings.scanning.disabled = True
        # Events are posted explicitly (kopf.event) for decisions; kopf's own INFO chatter is not.
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        # Each object's events are handled after this quiet period; kopf's 0.1 s default adds to every create.
        settings.batching.batch_window = 0.02
        settings.networking.request_timeout = 60
        op.kube = Kube.from_env(monitoring_ttl_s=min(30.0, options.resync_s), max_inflight=options.max_inflight)

    @kopf.on.login(id="login", registry=registry)
    def login(**kw: Any) -> kopf.ConnectionInfo | None:
        # The same sources as the lightkube client: the pod's ServiceAccount, else $KUBECONFIG.
        return kopf.login_with_service_account(**kw) or kopf.login_with_kubeconfig(**kw)

    @kopf.on.cleanup(id="close", registry=registry)
    async def close(**_: Any) -> None:
        if op.resync_task is not None:
            op.resync_task.cancel()
        await op.queue.close()
        if op.kube is not None:
            await op.kube.close()

    @kopf.index("apps", "v1", "deployments", id="kwasi_deployments", labels=MANAGED, registry=registry)
    async def kwasi_deployments(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
        key = _owner_key(namespace, labels)
        return {key: st.DeploymentInfo.from_body(body)} if key else None

    @kopf.index("", "v1", "pods", id="kwasi_pods", labels=MANAGED, registry=registry)
    async def kwasi_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
        key = _owner_key(namespace, labels)
        return {key: st.PodInfo.from_body(body)} if key else None

    async def child_changed(namespace: str | None, labels: kopf.Labels) -> None:
        key = _owner_key(namespace, labels)
        if key is not None:
            publish_soon(op, key)

    @kopf.index(*resource, id="kwasi_objects", registry=registry)
    async def kwasi_objects(namespace: str | None, name: str | None, body: kopf.Body, **_: Any) -> Any:
        return {(namespace, name): _snapshot(body)} if namespace and name else None

    @kopf.on.event("apps", "v1", "deployments", id="deployment_event", labels=MANAGED, registry=registry)
    async def deployment_event(namespace: str | None, labels: kopf.Labels, **kw: Any) -> None:
        _bind(kw)
        await child_changed(namespace, labels)

    @kopf.on.event("", "v1", "pods", id="pod_event", labels=MANAGED, registry=registry)
    async def pod_event(namespace: str | None, labels: kopf.Labels, **kw: Any) -> None:
        _bind(kw)
        await child_changed(namespace, labels)

    def _bind(kw: Mapping[str, Any]) -> None:
        op.indices = Indices(kw["kwasi_deployments"], kw["kwasi_pods"], kw["kwasi_objects"])
        if op.resync_task is None:  # started from a handler: its context carries kopf's event poster
            op.resync_task = asyncio.create_task(resync_loop(op))

    @kopf.on.event(*resource, id="wasminference_event", registry=registry)
    async def wasminference_event(type: str | None, namespace: str | None, name: str | None, body: kopf.Body,
                                  **kw: Any) -> None:
        _bind(kw)
        if not (namespace and name):
            return
        if type == "DELETED":
            op.forget((namespace, name))
        else:  # None (listed at start-up), ADDED, MODIFIED
            op.observe((namespace, name), body)

    return op
