"""How the pods are reached and watched: the Service and the Prometheus operator's monitors."""

from __future__ import annotations

from typing import Any

from kwasi_operator.render.meta import meta, selector
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


def monitors(name: str, namespace: str, spec: Spec) -> list[Obj]:
    """ServiceMonitor / PodMonitor as asked; the caller drops them when the CRDs are absent."""
    metrics = spec.section("metrics")
    interval = metrics.get("interval", "15s")
    m = meta(name, namespace)
    m["labels"] = {**m["labels"], **metrics.get("labels", {})}
    out: list[Obj] = []
    endpoint: dict[str, Any] = {"port": "http", "path": "/metrics", "interval": interval}
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
