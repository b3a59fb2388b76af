"""Operator metrics on /metrics (Prometheus text format), in a registry of their own."""

from __future__ import annotations

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


def serve(port: int, addr: str) -> None:
    """Serve /metrics from a daemon thread (port 0 disables it)."""
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)
