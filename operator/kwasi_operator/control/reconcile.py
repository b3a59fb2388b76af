"""One reconcile of a WasmInference: check what the spec refers to, render, server-side apply the children
(owned by the CR, so the garbage collector removes them with it), prune children the spec no longer asks
for, report what changed, and publish status. Failures are retried from the work queue with backoff."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Mapping
from typing import Any, cast

import kopf

from kwasi_operator import kinds, metrics
from kwasi_operator import status as st
from kwasi_operator.control.drift import report_repairs, version
from kwasi_operator.control.problems import namespace_terminating, preflight, rejected
from kwasi_operator.control.publish import publish, publish_soon
from kwasi_operator.control.state import MAX_BACKOFF_S, Operator, Retry, Version, backoff, log
from kwasi_operator.kube import ApiError
from kwasi_operator.render import render, selector_string, server_host, server_name, server_selector
from kwasi_operator.render.meta import child_key, split_key
from kwasi_operator.render.volumes import CACHE_DIR
from kwasi_operator.spec import Obj, Spec


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
        metrics.ERRORS.labels(reason=f"api_{e.code}").inc()
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


def desired(spec: Spec, name: str, namespace: str, generation: int) -> st.Desired:
    return st.Desired(
        generation=generation,
        replicas=None if spec.autoscaling else spec.replicas,
        selector=selector_string(name),
        endpoint=st.endpoint(name, namespace, spec.port),
        gpu_resource=spec.gpu.resource_name if spec.gpu else None,
        cache_path=CACHE_DIR if spec.model_cache else None,
        model_server=_server_desired(name, namespace, spec),
    )


def _server_desired(name: str, namespace: str, spec: Spec) -> st.ServerDesired | None:
    server = spec.model_server
    if server is None:
        return None
    return st.ServerDesired(replicas=None if server.autoscaling else server.replicas,
                            selector=",".join(f"{k}={v}" for k, v in server_selector(name).items()),
                            endpoint=f"{server_host(name, namespace)}:{server.port}")


async def _reconcile(op: Operator, key: st.Key, body: Mapping[str, Any], trigger: str) -> None:
    namespace, name = key
    kube = op.client()
    spec = Spec.parse(body["spec"])
    obj = op.tracked(key)
    obj.ref = _ref(body)
    if obj.published is None:  # first sight in this process: what an earlier one wrote is the base
        obj.published = copy.deepcopy(dict(body.get("status") or {})) or None
    obj.desired = desired(spec, name, namespace, int(body["metadata"].get("generation") or 0))

    available = op.available()
    problem, obj.cache_claim = await preflight(kube, namespace, spec, available)
    if problem is not None:
        await _fail(op, key, problem)

    manifests = render(name, namespace, spec, available, op.options.monitor_labels)
    kopf.append_owner_reference(manifests, owner=cast(kopf.Body, body))
    before = dict(obj.seen or {})
    seen = obj.seen = obj.seen or {}
    live: dict[str, Version] = {}

    async def apply(manifest: Obj) -> None:
        child = await kube.apply(manifest)
        tracked = child_key(child["kind"], child["metadata"]["name"], name)
        live[tracked] = seen[tracked] = version(child)  # at once: its watch event is an echo

    try:
        # One by one up to the Deployment (what its pods mount exists before them; pods start sooner than
        # with everything at once), then the rest together.
        first = next(i for i, m in enumerate(manifests) if m["kind"] == "Deployment") + 1
        for manifest in manifests[:first]:
            await apply(manifest)
        await asyncio.gather(*(apply(m) for m in manifests[first:]))
    except ApiError as e:
        if namespace_terminating(e):  # the object goes with its namespace: nothing to report, nothing to fix
            raise Retry(f"namespace {namespace} is being deleted", delay=MAX_BACKOFF_S) from e
        if e.code in (400, 403, 422):  # not transient: the spec (or the RBAC) must change first
            await _fail(op, key, rejected(spec, e))
        raise
    obj.failures = 0
    if obj.problem is not None:
        obj.problem = None
        op.event(key, "Normal", "Resolved", "the spec can be realised again")

    await _prune(op, key, {child_key(m["kind"], m["metadata"]["name"], name) for m in manifests}, trigger)
    if trigger in ("create", "update"):
        obj.drifted.clear()
        verb = "Created" if trigger == "create" else "Updated"
        applied = ", ".join(k.kind for k in kinds.CHILDREN if any(split_key(t, name)[0] == k.kind for t in live))
        op.event(key, "Normal", verb, f"applied {applied}: {describe(spec)}")
    else:
        report_repairs(op, key, before, live, resync=trigger == "resync")
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
        server = {child_key(k.kind, server_name(name), name) for k in kinds.SERVER_CHILDREN}
        candidates = set() if trigger == "create" else ({k.kind for k in kinds.OPTIONAL} | server) - wanted
    else:
        candidates = set(obj.applied) - wanted
    available = op.available()

    def exists(tracked: str) -> bool:  # no type, no such child
        kind = split_key(tracked, name)[0]
        return not kinds.BY_KIND[kind].crd or kind in available

    for tracked in sorted(filter(exists, candidates)):
        (obj.seen or {}).pop(tracked, None)  # from now on its watch events are not drift
        kind, child = split_key(tracked, name)
        if await op.client().delete_owned(kind, child, namespace, (obj.ref or {})["metadata"]["uid"]):
            op.event(key, "Normal", "Pruned", f"deleted {kind} {child}: the spec no longer asks for it")
    obj.applied = frozenset(wanted)


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
    server = spec.model_server
    if server is not None:
        count = (f"{server.replicas} replica(s)" if server.autoscaling is None else
                 f"autoscaling {server.autoscaling.min_replicas}-{server.autoscaling.max_replicas}")
        parts.append(f"model server: {count}, the GPUs and models there")
    return "; ".join(parts)
