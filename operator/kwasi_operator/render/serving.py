"""How the pods are reached and watched: the Service and the Prometheus operator's monitors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kwasi_operator.render.meta import INSTANCE_LABEL, meta, selector
from kwasi_operator.spec import Obj, Spec


def service(name: str, namespace: str, spec: Spec) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, namespace),
        "spec": {
            "selector": selector(name),
            "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


# Every runtime series gets the object's name as `wasminference` (the dashboards' variable), from the pod label
# as Prometheus' Kubernetes discovery names it.
WASMINFERENCE_RELABEL: Obj = {
    "sourceLabels": ["__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in INSTANCE_LABEL)],
    "targetLabel": "wasminference",
}


def monitors(name: str, namespace: str, spec: Spec, default_labels: Mapping[str, str] | None = None) -> list[Obj]:
    """ServiceMonitor / PodMonitor as asked; the caller drops them when the CRDs are absent. `default_labels`
    (the operator's --monitor-label, e.g. kube-prometheus-stack's `release`) yield to the spec's own."""
    metrics = spec.section("metrics")
    interval = metrics.get("interval", "15s")
    m = meta(name, namespace)
    m["labels"] = {**(default_labels or {}), **m["labels"], **metrics.get("labels", {})}
    out: list[Obj] = []
    endpoint: dict[str, Any] = {"port": "http", "path": "/metrics", "interval": interval,
                                "relabelings": [WASMINFERENCE_RELABEL]}
    if metrics.get("serviceMonitor"):
        out.append({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": m,
            "spec": {"selector": {"matchLabels": selector(name)}, "endpoints": [endpoint]},
        })
    if metrics.get("podMonitor"):
        out.append({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": m,
            "spec": {"selector": {"matchLabels": selector(name)}, "podMetricsEndpoints": [endpoint]},
        })
    return out
