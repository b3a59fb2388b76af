"""How many pods, and who decides: the PodDisruptionBudget, and either a HorizontalPodAutoscaler or a KEDA
ScaledObject on the runtime's Prometheus metrics."""

from __future__ import annotations

from collections.abc import Collection

from kwasi_operator import kinds
from kwasi_operator.render.meta import manifest, ref, selector
from kwasi_operator.spec import AUTOSCALING_METRICS, Autoscaling, Obj, Spec

# The label the monitors give every series of a WasmInference's pods (render/serving.py), so one query
# selects them whether a ServiceMonitor or a PodMonitor scraped them.
SERIES_LABEL = "wasminference"


def pod_disruption_budget(name: str, namespace: str, spec: Spec) -> Obj | None:
    replicas = spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas
    if replicas <= 1:
        return None
    return manifest(kinds.POD_DISRUPTION_BUDGET, name, namespace,
                    {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)}})


def uses_keda(spec: Spec, available: Collection[str]) -> bool:
    """KEDA when asked for, or (engine Auto) when its CRD is installed and a Prometheus address is given."""
    auto = spec.autoscaling
    if auto is None or auto.engine == "HPA":
        return False
    if auto.engine == "KEDA":
        return True
    return "ScaledObject" in available and auto.keda is not None and auto.keda.server_address is not None


def _target(auto: Autoscaling) -> str:
    # kvCacheUsage is a 0-1 ratio and `target` a percent: 80 is the quantity 800m.
    return f"{auto.target * 10}m" if auto.metric == "kvCacheUsage" else str(auto.target)


def horizontal_pod_autoscaler(name: str, namespace: str, spec: Spec) -> Obj | None:
    auto = spec.autoscaling
    if auto is None:
        return None
    source = {"metric": {"name": AUTOSCALING_METRICS[auto.metric]},
              "target": {"type": "AverageValue", "averageValue": _target(auto)}}
    if auto.min_replicas == 0:
        # With no pods there are no per-pod series: scaling from zero needs a metric of an object that is
        # always there (the Service; e.g. a Prometheus adapter rule summing the pods' series per Service),
        # and the API server accepts minReplicas 0 only with the HPAScaleToZero feature gate.
        metric: Obj = {"type": "Object", "object": {"describedObject": ref(kinds.SERVICE, name), **source}}
    else:
        metric = {"type": "Pods", "pods": source}
    return manifest(kinds.HORIZONTAL_POD_AUTOSCALER, name, namespace, {
        "scaleTargetRef": ref(kinds.DEPLOYMENT, name),
        "minReplicas": auto.min_replicas,
        "maxReplicas": auto.max_replicas,
        "metrics": [metric],
    })


def prometheus_query(name: str, namespace: str, metric: str) -> str:
    """The PromQL a ScaledObject scales on: the sum over the pods (their mean for the KV-cache ratio, in
    percent)."""
    series = f'{AUTOSCALING_METRICS[metric]}{{namespace="{namespace}",{SERIES_LABEL}="{name}"}}'
    return f"100 * avg({series})" if metric == "kvCacheUsage" else f"sum({series})"


def scaled_object(name: str, namespace: str, spec: Spec) -> Obj:
    """A KEDA ScaledObject: KEDA scales the Deployment between 0 and 1 itself (no HPAScaleToZero gate) and
    hands 1..max to the HPA it creates. With no pods the runtime exports nothing, so waking from zero needs
    a query on series that exist then (keda.query, e.g. the gateway's queue) or activationTarget left at 0
    with something else scaling to 1."""
    auto = spec.autoscaling
    assert auto is not None
    keda = auto.keda
    trigger: Obj = {
        "type": "prometheus",
        # The sums are per pod (AverageValue: replicas = sum / target); the KV ratio is a mean already.
        "metricType": "Value" if auto.metric == "kvCacheUsage" else "AverageValue",
        "metadata": {
            "serverAddress": (keda.server_address if keda else None) or "",
            "query": (keda.query if keda else None) or prometheus_query(name, namespace, auto.metric),
            "threshold": str(auto.target),
            "activationThreshold": str(auto.activation),
        },
    }
    return manifest(kinds.SCALED_OBJECT, name, namespace, {
        "scaleTargetRef": ref(kinds.DEPLOYMENT, name),
        "minReplicaCount": auto.min_replicas,
        "maxReplicaCount": auto.max_replicas,
        "pollingInterval": keda.polling_s if keda else 15,
        "cooldownPeriod": keda.cooldown_s if keda else 300,
        "triggers": [trigger],
    })
