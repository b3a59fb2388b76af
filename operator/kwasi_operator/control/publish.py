"""Status: computed from kopf's indices of the children (no API reads), written only when it changed,
coalesced over a short window for the burst of child events a rollout makes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kwasi_operator import metrics
from kwasi_operator import status as st
from kwasi_operator.control.state import Operator, log
from kwasi_operator.kube import ApiError


def publish_soon(op: Operator, key: st.Key) -> None:
    """Publish after a short delay, once for a burst of child events (a rollout is a dozen of them)."""
    obj = op.objects.get(key)
    if obj is None or obj.publishing is not None:
        return

    async def later() -> None:
        await asyncio.sleep(op.options.status_delay_s)
        obj.publishing = None
        try:
            await publish(op, key)
        except Exception:  # logged; the next event or resync publishes again
            metrics.ERRORS.labels(reason="status").inc()
            log.exception("%s/%s: status update failed", *key)

    obj.publishing = asyncio.create_task(later())


async def publish(op: Operator, key: st.Key) -> None:
    """Write status from the indices if it changed; events for the transitions that matter."""
    obj = op.objects.get(key)
    if obj is None or obj.desired is None or op.kube is None or op.indices is None:
        return
    deployments = list(op.indices.deployments.get(key, ()))
    deployment = next((d for d in deployments if not d.model_server), None)
    server = next((d for d in deployments if d.model_server), None)  # spec.modelServer's
    pods = list(op.indices.pods.get(key, []))
    service = key in op.indices.services
    cache = next(iter(op.indices.claims.get(key, ())), None) or obj.cache_claim
    before = obj.published
    new = st.build(obj.desired, deployment, pods, obj.problem, (before or {}).get("conditions", ()), service, cache,
                   server)
    want = obj.desired.replicas if obj.desired.replicas is not None else int(new.get("replicas", 0))
    metrics.set_replicas(*key, desired=want, ready=int(new.get("readyReplicas", 0)))
    if st.same(before, new):
        return
    # A merge patch keeps keys it does not mention: a model server that is gone must be removed by name.
    patch = new if "modelServer" in new else {**new, "modelServer": None}
    try:
        await op.kube.patch_status(key[1], key[0], patch)
    except ApiError as e:
        if e.code == 404:  # deleted meanwhile
            op.forget(key)
            return
        raise
    obj.published = new
    metrics.STATUS_UPDATES.inc()
    _transition_events(op, key, before, new)


def _cond(s: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any]:
    for c in (s or {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def _transition_events(op: Operator, key: st.Key, before: Mapping[str, Any] | None, new: Mapping[str, Any]) -> None:
    old_sched, sched = _cond(before, "Scheduled"), _cond(new, "Scheduled")
    if sched.get("status") == "False" and old_sched.get("status") != "False":
        op.event(key, "Warning", sched["reason"], sched["message"])
    old_ready, ready = _cond(before, "Ready"), _cond(new, "Ready")
    if ready.get("status") == "True" and old_ready.get("status") != "True":
        op.event(key, "Normal", "Ready", f"{ready['message']}; endpoint {new.get('endpoint')}")
