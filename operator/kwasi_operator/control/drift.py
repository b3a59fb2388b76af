"""Drift: a child changed or deleted by someone else is repaired from its own watch event, not by the next
resync. Each child's version as last applied (or watched) is kept in ``Tracked.seen``; an event with
another version is someone else's doing and queues a reconcile, whose server-side apply puts the operator's
fields back (or re-creates the child). Whether that reverted anything is judged after the apply: a change
that touches no field the operator owns (an HPA setting the replica count) is left alone, without an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp

from kwasi_operator import kinds, metrics
from kwasi_operator import status as st
from kwasi_operator.control.state import GONE, Operator, Version, log
from kwasi_operator.kube import ApiError
from kwasi_operator.render import MANAGED_BY, owner_key
from kwasi_operator.render.meta import child_key, split_key


def version(child: Mapping[str, Any]) -> Version:
    """(uid, a version that changes only when someone changes the child's spec)."""
    meta = child.get("metadata", {})
    gen = meta.get("generation")
    # Deployments, PDBs, HPAs and custom resources with a status subresource bump generation on spec changes
    # only (status writes bump resourceVersion); a Service has no generation, and nothing but its users
    # writes it, so its resourceVersion serves.
    return meta.get("uid", ""), f"g{gen}" if gen else f"rv{meta.get('resourceVersion', '')}"


def child_event(op: Operator, key: st.Key, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
    """A watch event of one of the operator's children: queue a repair if someone else changed it."""
    obj = op.objects.get(key)
    kind = child_key(kind, (body.get("metadata") or {}).get("name", ""), key[1])  # what the child is tracked by
    if obj is None or obj.seen is None or kind not in obj.seen:
        return  # not applied by this process (yet), or pruned: nothing to hold it to
    owner = op.latest(key)
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return  # the garbage collector is removing the children with their owner
    if event_type != "DELETED" and (body.get("metadata") or {}).get("deletionTimestamp"):
        return  # on its way out (its DELETED event decides)
    now = GONE if event_type == "DELETED" else version(body)
    if now == obj.seen[kind]:
        return  # the echo of our own apply (or a status-only change)
    obj.seen[kind] = now
    obj.drifted.setdefault(kind, now)
    op.queue.add(key)


def report_repairs(op: Operator, key: st.Key, before: Mapping[str, Version], live: Mapping[str, Version],
                   resync: bool) -> None:
    """After the applies: a Repaired event for each child they put back. ``before`` is what was known of
    the children when the reconcile started, ``live`` what the applies returned."""
    obj = op.tracked(key)
    for kind, now in live.items():
        changed = obj.drifted.pop(kind, None)
        if changed is None and resync:  # a change whose watch event this process missed
            changed = before.get(kind)
        if changed is None or changed == now:
            continue  # nothing of ours was changed (or nobody touched it)
        what = "re-created (it was deleted)" if changed[0] != now[0] else "reverted (it was edited)"
        child_kind, child = split_key(kind, key[1])
        metrics.REPAIRS.labels(kind=child_kind).inc()
        op.event(key, "Warning", "Repaired", f"{child_kind} {child} {what}")
        log.info("%s/%s: repaired %s: %s", *key, kind, what)
    obj.drifted.clear()


async def watch_kind(op: Operator, kind: kinds.Kind, namespace: str | None) -> None:
    """Drift of the children of another project's kind (monitors, ScaledObjects, InferencePools).

    Watched here rather than by kopf: kopf takes a watched kind that goes away (KEDA uninstalled) as fatal
    and stops the operator. This watch ends when the kind's CRD goes (a 404), and is started again by
    :func:`sync_watches` when it is back.
    """
    selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
    while kind.kind in op.available():
        try:
            async for event_type, body in op.client().watch(kind, selector, namespace):
                meta = body.get("metadata") or {}
                key = owner_key(meta.get("namespace"), meta.get("labels") or {})
                if key is not None:
                    child_event(op, key, kind.kind, event_type, body)
        except ApiError as e:
            if e.code == 404:
                return  # the kind is gone
            log.debug("watch of %s: %s; again in 1 s", kind.plural, e)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            log.debug("watch of %s: %s; again in 1 s", kind.plural, e)
        await asyncio.sleep(1)


def sync_watches(op: Operator) -> None:
    """One watch per installed CRD kind (and watched namespace); stop those whose kind went away."""
    available = op.available()
    spaces: tuple[str | None, ...] = op.options.namespaces or (None,)
    if any(c in ns for ns in op.options.namespaces for c in "*?["):
        spaces = ()  # namespace patterns: no list of namespaces to watch in; the resync repairs these kinds
    wanted = {(k.kind, ns) for k in kinds.CRD_KINDS.values() if k.kind in available for ns in spaces}
    for key, task in list(op.crd_watches.items()):
        if key not in wanted or task.done():
            task.cancel()
            del op.crd_watches[key]
    for kind, ns in wanted - set(op.crd_watches):
        op.crd_watches[(kind, ns)] = asyncio.create_task(watch_kind(op, kinds.BY_KIND[kind], ns))
