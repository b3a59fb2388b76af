"""The variables and label scopes of the dashboards over `kwasi-runtime serve` pods.

Pods carry `namespace` and `pod` from Prometheus' Kubernetes discovery and `wasminference` from the monitors
the operator renders (a relabelling of the pod's `kwasi.dev/wasminference` label); the runtime adds `model`.
Every variable is anchored on `kwasi_requests_running`, a gauge only kwasi exports, present from start-up.
"""

from __future__ import annotations

from kwasi_dashboards.grafana import Obj, adhoc_variable, datasource_variable, query_variable
from kwasi_dashboards.promql import Scope, matchers

ANCHOR = "kwasi_requests_running"
PODS = Scope(("namespace", "namespace"), ("wasminference", "wasminference"), ("pod", "pod"))
MODELS = Scope(*PODS.pairs, ("model", "model"))


def variables() -> list[Obj]:
    ns = ("namespace", "namespace")
    wi = ("wasminference", "wasminference")
    model = ("model", "model")
    return [
        datasource_variable(),
        query_variable("namespace", "Namespace", f"label_values({ANCHOR}, namespace)"),
        query_variable("wasminference", "WasmInference",
                       f"label_values({ANCHOR}{{{matchers(ns)}}}, wasminference)"),
        query_variable("model", "Model", f"label_values({ANCHOR}{{{matchers(ns, wi)}}}, model)"),
        query_variable("pod", "Pod", f"label_values({ANCHOR}{{{matchers(ns, wi, model)}}}, pod)"),
        adhoc_variable(),
    ]


def targets_down() -> str:
    """Runtime targets whose last scrape failed (a crashed server's series vanish; `up` stays)."""
    return f"sum({PODS.sel('up')} == bool 0)"
