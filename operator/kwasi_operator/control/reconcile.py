"""One reconcile of a WasmInference: check what the spec refers to, render, server-side apply the children
(owned by the CR, so the garbage collector removes them with it), prune children the spec no longer asks
for, report what changed, and publish status. Failures are retried from the work queue with backoff."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import kopf

from kwasi_operator import metrics
from kwasi_operator import status as st
from kwasi_operator.control.problems import namespace_terminating, preflight, rejected
from kwasi_operator.control.publish import publish, publish_soon
from kwasi_operator.control.state import MAX_BACKOFF_S, Operator, Retry, backoff, log
from kwasi_operator.kube import OPTIONAL_KINDS, ApiError
from kwasi_operator.render import render, selector_string
from kwasi_operator.spec import Obj, Spec

MONITOR_KINDS = {"ServiceMonitor", "PodMonitor"}


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


def _ref(body: Mapping[str, Any]) -> Obj:
    meta = body["metadata"]
    return {"apiVersion": body["apiVersion"], "kind": body["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]}}


async def _reconcile(op: Operator, key: st.Key, body: Mapping[str, Any], trigger: str) -> None:
    namespace, name = key
    kube = op.client()
    spec = Spec.parse(body["spec"])
    obj = op.tracked(key)
    obj.ref = _ref(body)
    obj.desired = st.Desired(
        generation=int(body["metadata"].get("generation") or 0),
        replicas=None if spec.autoscaling else spec.replicas,
        selector=selector_string(name),
        endpoint=st.endpoint(name, namespace, spec.port),
        gpu_resource=spec.gpu.resource_name if spec.gpu else None,
    )

    problem = await preflight(kube, namespace, spec)
    if problem is not None:
        await _fail(op, key, problem)

    manifests = render(name, namespace, spec, await kube.monitoring_available(), op.options.monitor_labels)
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
    obj.failures = 0
    if obj.problem is not None:
        obj.problem = None
        op.event(key, "Normal", "Resolved", "the spec can be realised again")

    await _prune(op, key, {m["kind"] for m in manifests}, trigger)
    _report_changes(op, key, live, spec, trigger)
    publish_soon(op, key)  # with the burst of Deployment/pod events that follows


async def _fail(op: Operator, key: st.Key, problem: st.Problem) -> None:
    """Report a spec that cannot be realised now, then retry with backoff (from the work queue)."""
    obj = op.tracked(key)
    if obj.problem != problem:
        op.event(key, "Warning", problem.reason, problem.message)
        log.warning("%s/%s: %s: %s", *key, problem.reason, problem.message)
    obj.problem = problem
    metrics.ERRORS.labels(reason=problem.reason).inc()
    await publish(op, key)
    delay = backoff(op.options, obj.failures)
    obj.failures += 1
    raise Retry(f"{problem.reason}: {problem.message} (retry in {delay:g} s)", delay=delay)


async def _prune(op: Operator, key: st.Key, wanted: set[str], trigger: str) -> None:
    """Delete optional children the spec no longer asks for (e.g. the PDB when replicas drop to 1)."""
    namespace, name = key
    obj = op.tracked(key)
    if obj.applied is None:  # first sight in this process: anything may be left from an older spec
        candidates = set() if trigger == "create" else set(OPTIONAL_KINDS) - wanted
    else:
        candidates = set(obj.applied) - wanted
    if candidates & MONITOR_KINDS and not await op.client().monitoring_available():
        candidates -= MONITOR_KINDS  # the types do not exist, so neither can such children
    for kind in sorted(candidates):
        if await op.client().delete_if_present(kind, name, namespace):
            op.event(key, "Normal", "Pruned", f"deleted {kind} {name}: the spec no longer asks for it")
    obj.applied = frozenset(wanted)


def _version(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(uid, a version that changes only when someone changes the object's spec)."""
    meta = obj.get("metadata", {})
    gen = meta.get("generation")
    # Deployments, PDBs and HPAs bump generation on spec changes only (status writes bump resourceVersion).
    return meta.get("uid", ""), f"g{gen}" if gen else f"rv{meta.get('resourceVersion', '')}"


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


def _report_changes(op: Operator, key: st.Key, live: Sequence[Obj], spec: Spec, trigger: str) -> None:
    """Events for decisions: children created/updated, or repaired after someone changed them."""
    now = {child["kind"]: _version(child) for child in live}
    obj = op.tracked(key)
    before, obj.seen = obj.seen, now
    kinds = ", ".join(now)
    if trigger == "create":
        op.event(key, "Normal", "Created", f"applied {kinds}: {describe(spec)}")
    elif trigger == "update":
        op.event(key, "Normal", "Updated", f"applied {kinds}: {describe(spec)}")
    elif before is not None:  # resync: nothing should have changed unless someone else did it
        for kind, (uid, version) in now.items():
            old = before.get(kind)
            if old is None or old == (uid, version):
                continue
            what = "re-created (it was deleted)" if old[0] != uid else "reverted (it was edited)"
            metrics.REPAIRS.labels(kind=kind).inc()
            op.event(key, "Warning", "Repaired", f"{kind} {key[1]} {what}")
            log.info("%s/%s: repaired %s: %s", *key, kind, what)
