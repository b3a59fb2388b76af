"""Operator metrics on /metrics (Prometheus text format), in a registry of their own."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "kwasi_operator_reconciles_total", "Reconciles of WasmInference objects, by trigger and result.",
    ["trigger", "result"], registry=REGISTRY,
)
ERRORS = Counter(
    "kwasi_operator_reconcile_errors_total", "Reconciles that failed, by reason.", ["reason"], registry=REGISTRY,
)
LATENCY = Histogram(
    "kwasi_operator_reconcile_duration_seconds", "Wall time of one reconcile (render, apply, prune, status).",
    ["trigger"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REPAIRS = Counter(
    "kwasi_operator_repairs_total", "Children re-created or reverted after a change made outside the operator.",
    ["kind"], registry=REGISTRY,
)
STATUS_UPDATES = Counter(
    "kwasi_operator_status_updates_total", "Status patches written to WasmInference objects.", registry=REGISTRY,
)
MANAGED = Gauge(
    "kwasi_operator_managed_objects", "WasmInference objects this operator currently tracks.", registry=REGISTRY,
)
QUEUE_STATES = ("running", "queued", "retrying")
QUEUE_DEPTH = Gauge(
    "kwasi_operator_workqueue_depth",
    "Keys in the work queue: running (a reconcile in progress), queued (one more run due after it), "
    "retrying (waiting on a backoff timer).", ["state"], registry=REGISTRY,
)
# Per object, as the status reports them: what the alerts on pods that do not become ready compare.
REPLICAS = Gauge(
    "kwasi_operator_wasminference_replicas", "Replicas of a WasmInference's Deployment, desired and ready.",
    ["namespace", "wasminference", "state"], registry=REGISTRY,
)


def watch_queue(depth: Callable[[str], int]) -> None:
    """Read the work queue's depth at scrape time (one operator per process)."""
    for state in QUEUE_STATES:
        QUEUE_DEPTH.labels(state=state).set_function(lambda s=state: depth(s))  # type: ignore[misc]


def set_replicas(namespace: str, name: str, desired: int, ready: int) -> None:
    REPLICAS.labels(namespace=namespace, wasminference=name, state="desired").set(desired)
    REPLICAS.labels(namespace=namespace, wasminference=name, state="ready").set(ready)


def forget_replicas(namespace: str, name: str) -> None:
    for state in ("desired", "ready"):
        with contextlib.suppress(KeyError):
            REPLICAS.remove(namespace, name, state)


def serve(port: int, addr: str) -> None:
    """Serve /metrics from a daemon thread (port 0 disables it)."""
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)
