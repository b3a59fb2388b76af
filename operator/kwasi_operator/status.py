"""The observed state of a WasmInference, computed from its Deployment and pods (pure functions).

The operator indexes its Deployments and pods (kopf indices, no API calls) and turns them into
``status``: phase, conditions (Ready, Progressing, Degraded, Scheduled), replica counts, selector,
observedGeneration and endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kwasi_operator.pod_failures import PodFailure, pod_failure
from kwasi_operator.render.meta import SERVER_LABEL
from kwasi_operator.spec import Obj

Key = tuple[str, str]  # (namespace, WasmInference name)


@dataclass(frozen=True)
class DeploymentInfo:
    generation: int
    observed_generation: int
    replicas: int
    ready_replicas: int
    updated_replicas: int
    available_replicas: int
    conditions: Mapping[str, tuple[str, str, str]]  # type -> (status, reason, message)
    model_server: bool = False  # spec.modelServer's Deployment, not the guests'

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> DeploymentInfo:
        st = body.get("status") or {}
        conds = {c["type"]: (c.get("status", ""), c.get("reason", ""), c.get("message", ""))
                 for c in st.get("conditions") or []}
        return cls(
            generation=int(body.get("metadata", {}).get("generation") or 0),
            observed_generation=int(st.get("observedGeneration") or 0),
            replicas=int(st.get("replicas") or 0),
            ready_replicas=int(st.get("readyReplicas") or 0),
            updated_replicas=int(st.get("updatedReplicas") or 0),
            available_replicas=int(st.get("availableReplicas") or 0),
            conditions=conds,
            model_server=_is_model_server(body),
        )


@dataclass(frozen=True)
class PodInfo:
    name: str
    phase: str
    node: str | None
    unschedulable: str | None  # the scheduler's message while PodScheduled=False/Unschedulable
    failure: PodFailure | None = None  # a container that cannot start, in its own words
    model_server: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodInfo:
        st = body.get("status") or {}
        message = None
        for c in st.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                message = c.get("message") or "unschedulable"
        return cls(
            name=body.get("metadata", {}).get("name", ""),
            phase=st.get("phase", "Pending"),
            node=(body.get("spec") or {}).get("nodeName"),
            unschedulable=message,
            failure=pod_failure(body),
            model_server=_is_model_server(body),
        )


def _is_model_server(body: Mapping[str, Any]) -> bool:
    return SERVER_LABEL in ((body.get("metadata") or {}).get("labels") or {})


@dataclass(frozen=True)
class ClaimInfo:
    """The model cache's PersistentVolumeClaim as the cluster reports it."""

    name: str
    phase: str
    capacity: str | None  # once bound
    requested: str | None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ClaimInfo:
        st = body.get("status") or {}
        spec = body.get("spec") or {}
        return cls(
            name=body.get("metadata", {}).get("name", ""),
            phase=st.get("phase", "Pending"),
            capacity=(st.get("capacity") or {}).get("storage"),
            requested=((spec.get("resources") or {}).get("requests") or {}).get("storage"),
        )


@dataclass(frozen=True)
class Problem:
    """Why the spec cannot be realised right now (reported, then retried with backoff)."""

    reason: str
    message: str


@dataclass(frozen=True)
class ServerDesired:
    """What the last reconcile asked of spec.modelServer's side."""

    replicas: int | None  # None: its HPA owns the count
    selector: str
    endpoint: str


@dataclass(frozen=True)
class Desired:
    """What the last reconcile asked for."""

    generation: int
    replicas: int | None  # None: an HPA owns the count
    selector: str
    endpoint: str | None
    gpu_resource: str | None
    cache_path: str | None = None  # where the replicas mount the model cache
    model_server: ServerDesired | None = None


def endpoint(name: str, namespace: str, port: int) -> str:
    return f"{name}.{namespace}.svc.cluster.local:{port}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, status: bool | None, reason: str, message: str = "") -> Obj:
    value = "Unknown" if status is None else ("True" if status else "False")
    return {"type": type_, "status": value, "reason": reason, "message": message}


def with_transition_times(new: Sequence[Obj], old: Iterable[Mapping[str, Any]], generation: int) -> list[Obj]:
    """Stamp lastTransitionTime, keeping the old one where a condition's status did not change."""
    before = {c.get("type"): c for c in old}
    out = []
    for c in new:
        prev = before.get(c["type"])
        keep = prev is not None and prev.get("status") == c["status"] and prev.get("lastTransitionTime")
        out.append({**c, "observedGeneration": generation,
                    "lastTransitionTime": prev["lastTransitionTime"] if keep and prev else _now()})
    return out


def scheduling_reason(message: str, gpu_resource: str | None) -> str:
    """InsufficientGPU when the scheduler says the GPU resource is short, Unschedulable otherwise."""
    if gpu_resource and f"Insufficient {gpu_resource}" in message:
        return "InsufficientGPU"
    if "Insufficient nvidia.com/" in message:
        return "InsufficientGPU"
    return "Unschedulable"


def model_server(desired: ServerDesired, dep: DeploymentInfo | None) -> tuple[bool, Obj, Obj]:
    """(ready, status.modelServer, the ModelServerReady condition) of spec.modelServer's Deployment."""
    replicas = dep.replicas if dep else 0
    ready = dep.ready_replicas if dep else 0
    want = desired.replicas if desired.replicas is not None else (replicas or 1)
    rolled_out = dep is not None and dep.observed_generation >= dep.generation and dep.updated_replicas >= want
    ok = want > 0 and ready >= want and rolled_out
    reason = "MinimumReplicasReady" if ok else ("ScaledToZero" if want == 0 else "ReplicasNotReady")
    fields = {"replicas": replicas, "readyReplicas": ready, "selector": desired.selector,
              "endpoint": desired.endpoint}
    return ok, fields, condition("ModelServerReady", ok, reason, f"{ready}/{want} model-server replicas ready")


def compute(
    desired: Desired,
    deployment: DeploymentInfo | None,
    pods: Sequence[PodInfo],
    problem: Problem | None,
    service: bool = True,
    cache: ClaimInfo | None = None,
    server_deployment: DeploymentInfo | None = None,
) -> tuple[str, Obj, list[Obj]]:
    """(phase, status fields without conditions, conditions without timestamps). `pods` are both sides' with
    spec.modelServer (the GPU side is the model server's), `server_deployment` the model server's.

    The Degraded rule (operator/README.md): Degraded=True when the object cannot reach what its spec asks
    without someone acting: the spec cannot be realised (a problem), any pod cannot be scheduled (whether
    0 or N-1 of N replicas run), a pod's container cannot start (its image, a download, the runtime: in the
    container's own words), or the Deployment reports a failure (ProgressDeadlineExceeded, ReplicaFailure).
    Starting, rolling out, running and stopped are not degraded.
    """
    dep = deployment
    replicas = dep.replicas if dep else 0
    ready = dep.ready_replicas if dep else 0
    want = desired.replicas if desired.replicas is not None else (replicas or 1)
    fields: Obj = {
        "replicas": replicas,
        "readyReplicas": ready,
        "selector": desired.selector,
        "observedGeneration": desired.generation,
    }
    if desired.endpoint and service:  # only while the Service exists: an endpoint must be reachable
        fields["endpoint"] = desired.endpoint
    server_ok, server_cond = True, None
    if desired.model_server is not None:
        server_ok, fields["modelServer"], server_cond = model_server(desired.model_server, server_deployment)
    if desired.cache_path and cache is not None:
        size = cache.capacity or cache.requested
        fields["modelCache"] = {"claimName": cache.name, "path": desired.cache_path, "phase": cache.phase,
                                **({"size": size} if size else {})}

    stuck = [p for p in pods if p.phase == "Pending" and p.unschedulable]
    if stuck:
        msg = stuck[0].unschedulable or ""
        scheduled = condition("Scheduled", False, scheduling_reason(msg, desired.gpu_resource),
                              f"{len(stuck)} pod(s) pending: {msg}")
    elif pods:
        nodes = sorted({p.node for p in pods if p.node})
        scheduled = condition("Scheduled", True, "Scheduled", f"on {', '.join(nodes)}" if nodes else "")
    else:
        scheduled = condition("Scheduled", None, "NoPods", "no pods yet")

    rolled_out = dep is not None and dep.observed_generation >= dep.generation and dep.updated_replicas >= want
    failing = None
    if dep is not None:
        for ctype, bad in (("ReplicaFailure", "True"), ("Progressing", "False")):
            status, reason, message = dep.conditions.get(ctype, ("", "", ""))
            if status == bad:
                failing = (reason or ctype, message)

    if problem is not None:
        phase = "Failed"
        ready_c = condition("Ready", False, problem.reason, problem.message)
        progressing = condition("Progressing", False, problem.reason, problem.message)
        degraded = condition("Degraded", True, problem.reason, problem.message)
    elif want == 0:
        phase = "Stopped"
        ready_c = condition("Ready", False, "ScaledToZero", "replicas is 0")
        progressing = condition("Progressing", False, "ScaledToZero", "replicas is 0")
        degraded = condition("Degraded", False, "ScaledToZero", "")
    elif ready >= want and rolled_out and not stuck and server_ok:
        phase = "Ready"
        ready_c = condition("Ready", True, "MinimumReplicasReady", f"{ready}/{want} replicas ready")
        progressing = condition("Progressing", False, "RolledOut", "")
        degraded = condition("Degraded", False, "AsExpected", "")
    else:
        detail = f"{ready}/{want} replicas ready"
        if server_cond is not None and not server_ok:
            detail += f", {server_cond['message']}"
        if stuck:
            phase = "Pending" if ready == 0 else "Degraded"
            reason = scheduled["reason"]
            ready_c = condition("Ready", ready >= want, reason, f"{detail}; {scheduled['message']}")
            progressing = condition("Progressing", True, "WaitingForScheduling", detail)
            degraded = condition("Degraded", True, reason, scheduled["message"])
        elif broken := [p for p in pods if p.failure is not None]:
            failure = broken[0].failure
            assert failure is not None
            phase = "Degraded" if ready > 0 else "Failed"
            message = f"{detail}; pod {broken[0].name}: {failure.message}"
            ready_c = condition("Ready", False, failure.reason, message)
            progressing = condition("Progressing", False, failure.reason, message)
            degraded = condition("Degraded", True, failure.reason, message)
        elif failing is not None:
            phase = "Degraded"
            ready_c = condition("Ready", False, failing[0], f"{detail}; {failing[1]}")
            progressing = condition("Progressing", False, failing[0], failing[1])
            degraded = condition("Degraded", True, failing[0], failing[1])
        else:
            phase = "Progressing"
            ready_c = condition("Ready", False, "ReplicasNotReady", detail)
            progressing = condition("Progressing", True, "RollingOut", detail)
            degraded = condition("Degraded", False, "AsExpected", "")
    conditions = [ready_c, progressing, degraded, scheduled]
    return phase, fields, conditions if server_cond is None else [*conditions, server_cond]


def build(
    desired: Desired,
    deployment: DeploymentInfo | None,
    pods: Sequence[PodInfo],
    problem: Problem | None,
    old_conditions: Iterable[Mapping[str, Any]] = (),
    service: bool = True,
    cache: ClaimInfo | None = None,
    server_deployment: DeploymentInfo | None = None,
) -> Obj:
    """The full ``status`` object."""
    phase, fields, conds = compute(desired, deployment, pods, problem, service, cache, server_deployment)
    return {"phase": phase, **fields, "conditions": with_transition_times(conds, old_conditions, desired.generation)}


def same(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    """Equal apart from condition timestamps (which only change when a status does)."""
    if a is None:
        return False

    def strip(s: Mapping[str, Any]) -> Any:
        return {**s, "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                                    for c in s.get("conditions", [])]}

    return bool(strip(a) == strip(b))
