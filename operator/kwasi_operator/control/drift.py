"""Drift: a child changed or deleted by someone else is repaired from its own watch event, not by the next
resync. Each child's version as last applied (or watched) is kept in ``Tracked.seen``; an event with
another version is someone else's doing and queues a reconcile, whose server-side apply puts the operator's
fields back (or re-creates the child). Whether that reverted anything is judged after the apply: a change
that touches no field the operator owns (an HPA setting the replica count) is left alone, without an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kwasi_operator import metrics
from kwasi_operator import status as st
from kwasi_operator.control.state import GONE, Operator, Version, log


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
    if obj is None or obj.seen is None or kind not in obj.seen:
        return  # not applied by this process (yet), or pruned: nothing to hold it to
    owner = op.latest(key)
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return  # the garbage collector is removing the children with their owner
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
        metrics.REPAIRS.labels(kind=kind).inc()
        op.event(key, "Warning", "Repaired", f"{kind} {key[1]} {what}")
        log.info("%s/%s: repaired %s: %s", *key, kind, what)
    obj.drifted.clear()
