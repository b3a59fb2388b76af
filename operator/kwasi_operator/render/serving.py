"""How the pods are reached and watched: the Service, the Prometheus operator's monitors, and an
InferencePool of the Gateway API inference extension."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kwasi_operator import kinds
from kwasi_operator.render.meta import INSTANCE_LABEL, manifest, selector
from kwasi_operator.render.scaling import SERIES_LABEL
from kwasi_operator.spec import AUTOSCALING_METRICS, Obj, Spec

# The `module` label of the runtime's series for /v1 (OpenAI) requests: the file stem of the chat guest
# bundled in the runtime image (KWASI_CHAT_GUEST=/opt/kwasi/guests/openai_chat.wasm, Dockerfile).
CHAT_MODULE = "openai_chat"
PICKER_FLAGS_ANNOTATION = "kwasi.dev/endpoint-picker-flags"


def service(name: str, namespace: str, spec: Spec) -> Obj:
    return manifest(kinds.SERVICE, name, namespace, {
        "selector": selector(name),
        "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}],
    })


# Every runtime series gets the object's name as `wasminference` (the dashboards' variable and what the
# ScaledObject's query selects), from the pod label as Prometheus' Kubernetes discovery names it.
WASMINFERENCE_RELABEL: Obj = {
    "sourceLabels": ["__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in INSTANCE_LABEL)],
    "targetLabel": SERIES_LABEL,
}


def monitors(name: str, namespace: str, spec: Spec, default_labels: Mapping[str, str] | None = None) -> list[Obj]:
    """ServiceMonitor / PodMonitor as asked; the caller drops them when the CRDs are absent. `default_labels`
    (the operator's --monitor-label, e.g. kube-prometheus-stack's `release`) yield to the operator's own and
    the spec's."""
    metrics = spec.section("metrics")
    interval = metrics.get("interval", "15s")
    endpoint: dict[str, Any] = {"port": "http", "path": "/metrics", "interval": interval,
                                "relabelings": [WASMINFERENCE_RELABEL]}
    out: list[Obj] = []
    for kind, wanted, endpoints in ((kinds.SERVICE_MONITOR, "serviceMonitor", "endpoints"),
                                    (kinds.POD_MONITOR, "podMonitor", "podMetricsEndpoints")):
        if metrics.get(wanted):
            body = {"selector": {"matchLabels": selector(name)}, endpoints: [endpoint]}
            monitor = manifest(kind, name, namespace, body)
            own = monitor["metadata"]["labels"]
            monitor["metadata"]["labels"] = {**(default_labels or {}), **own, **metrics.get("labels", {})}
            out.append(monitor)
    return out


def endpoint_picker_flags(model: str) -> list[str]:
    """The flags an endpoint picker (the inference extension's EPP) needs to read kwasi's metrics instead of
    vLLM's: the OpenAI guest's queue and running gauges and the model's KV-cache ratio. The label filters
    matter: the EPP takes one matching series, it does not sum (WAGI guests have their own series)."""
    labels = f'model="{model}",module="{CHAT_MODULE}"'
    return [
        f"--total-queued-requests-metric={AUTOSCALING_METRICS['queue']}{{{labels}}}",
        f"--total-running-requests-metric={AUTOSCALING_METRICS['requestsRunning']}{{{labels}}}",
        f"--kv-cache-usage-percentage-metric={AUTOSCALING_METRICS['kvCacheUsage']}{{model=\"{model}\"}}",
        "--lora-info-metric=",  # no LoRA adapters
    ]


def inference_pool(name: str, namespace: str, spec: Spec) -> Obj | None:
    """The pods as an InferencePool (inference.networking.k8s.io/v1) handing routing to the named endpoint
    picker; an HTTPRoute of the user's Gateway then routes to the pool instead of the Service."""
    pool = spec.inference_pool
    if pool is None:
        return None
    model = pool.model or (spec.models[0].name if spec.models else "default")
    annotations = {"annotations": {PICKER_FLAGS_ANNOTATION: " ".join(endpoint_picker_flags(model))}}
    picker = {"name": pool.picker_name, "port": {"number": pool.picker_port}, "failureMode": pool.failure_mode}
    return manifest(kinds.INFERENCE_POOL, name, namespace, {
        "selector": {"matchLabels": selector(name)},
        "targetPorts": [{"number": spec.port}],
        "endpointPickerRef": picker,
    }, annotations)
