"""Operator: the kwasi-operator's reconciles, errors, durations, work queue and the replicas it reports.

Its monitor honours labels, so the per-object series keep the object's `namespace`; the process' own series
carry the operator pod's labels.
"""

from __future__ import annotations

from kwasi_dashboards.grafana import (
    Board,
    Column,
    Obj,
    Query,
    adhoc_variable,
    datasource_variable,
    query_variable,
    stat,
    table,
    timeseries,
)
from kwasi_dashboards.promql import Scope, matchers

UID = "kwasi-operator"
PROCESS = Scope(("pod", "pod"))
OBJECTS = Scope(("namespace", "namespace"), ("wasminference", "wasminference"), ("pod", "pod"))
REPLICAS = "kwasi_operator_wasminference_replicas"
DESIRED, READY = 'state="desired"', 'state="ready"'


def variables() -> list[Obj]:
    pod, ns = ("pod", "pod"), ("namespace", "namespace")
    return [
        datasource_variable(),
        query_variable("pod", "Operator pod", "label_values(kwasi_operator_managed_objects, pod)"),
        query_variable("namespace", "Namespace", f"label_values({REPLICAS}{{{matchers(pod)}}}, namespace)"),
        query_variable("wasminference", "WasmInference",
                       f"label_values({REPLICAS}{{{matchers(pod, ns)}}}, wasminference)"),
        adhoc_variable(),
    ]


def dashboard() -> Obj:
    b = Board(UID, "kwasi / Operator", "kwasi-operator: reconcile rate, errors, durations, work queue and the "
              "replicas of each WasmInference.", variables())
    reconciles, errors = "kwasi_operator_reconciles_total", "kwasi_operator_reconcile_errors_total"
    duration = "kwasi_operator_reconcile_duration_seconds"
    depth = "kwasi_operator_workqueue_depth"

    b.row("Summary")
    b.add(
        stat("Managed objects", "WasmInference objects the operator tracks.", "short",
             [Query(f"sum({PROCESS.sel('kwasi_operator_managed_objects')})")]),
        stat("Reconciles / s", "Reconciles per second, every trigger and result.", "ops",
             [Query(PROCESS.sum_rate(reconciles))]),
        stat("Errors / s", "Failed reconciles per second, every reason.", "ops",
             [Query(PROCESS.sum_rate(errors))], thresholds=((None, "green"), (0.01, "red"))),
        stat("Queue depth", "Keys in the work queue (running, queued and retrying).", "short",
             [Query(f"sum({PROCESS.sel(depth)})")]),
        stat("Reconcile p95", "95th percentile wall time of one reconcile.", "s",
             [Query(PROCESS.quantile(0.95, duration))]),
        stat("Replicas not ready", "Desired minus ready replicas over the selected WasmInferences.", "short",
             [Query(f"sum({OBJECTS.sel(REPLICAS, DESIRED)}) - "
                    f"sum({OBJECTS.sel(REPLICAS, READY)})")],
             thresholds=((None, "green"), (1, "orange"))),
    )

    b.row("Reconciles")
    b.add(
        timeseries("Reconciles by result", "Reconciles per second by result.", "ops",
                   [Query(PROCESS.sum_rate(reconciles, by=("result",)), "{{result}}")], stack=True, width=8),
        timeseries("Reconciles by trigger", "Reconciles per second by what started them (create, update, resume, "
                   "resync).", "ops",
                   [Query(PROCESS.sum_rate(reconciles, by=("trigger",)), "{{trigger}}")], stack=True, width=8),
        timeseries("Errors by reason", "Failed reconciles per second by reason (API status, spec problem).", "ops",
                   [Query(PROCESS.sum_rate(errors, by=("reason",)), "{{reason}}")], stack=True, width=8),
        timeseries("Reconcile duration", "Wall time of one reconcile (render, apply, prune, status): p50, p95, p99, "
                   "mean.", "s", [
                       *(Query(PROCESS.quantile(q, duration), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)),
                       Query(PROCESS.mean(duration), "mean")], width=8),
        timeseries("Work queue depth", "Keys running, queued for another run, and waiting on a retry timer.",
                   "short", [Query(f"sum by (state) ({PROCESS.sel(depth)})", "{{state}}")], stack=True, width=8),
        timeseries("Status updates and repairs", "Status patches per second, and children re-created or reverted "
                   "after changes made outside the operator.", "ops", [
                       Query(PROCESS.sum_rate("kwasi_operator_status_updates_total"), "status updates"),
                       Query(PROCESS.sum_rate("kwasi_operator_repairs_total", by=("kind",)), "repaired {{kind}}")],
                   width=8),
    )

    b.row("WasmInferences")
    by_object = ("namespace", "wasminference")
    b.add(
        timeseries("Replicas desired and ready", "Per WasmInference, as its status reports them.", "short", [
            Query(f"sum by (namespace, wasminference, state) ({OBJECTS.sel(REPLICAS)})",
                  "{{namespace}}/{{wasminference}} {{state}}")], width=12),
        table("WasmInferences", "Desired and ready replicas per object (latest).", "wasminference", [
            Column("Desired", "short", f"sum by ({', '.join(by_object)}) "
                                       f"({OBJECTS.sel(REPLICAS, DESIRED)})"),
            Column("Ready", "short", f"sum by ({', '.join(by_object)}) "
                                     f"({OBJECTS.sel(REPLICAS, READY)})"),
        ], width=12),
    )
    return b.json()
