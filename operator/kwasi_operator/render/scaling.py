"""How many pods, and who decides: the PodDisruptionBudget and the HorizontalPodAutoscaler."""

from __future__ import annotations

from kwasi_operator.render.meta import meta, selector
from kwasi_operator.spec import AUTOSCALING_METRICS, Obj, Spec


def pod_disruption_budget(name: str, namespace: str, spec: Spec) -> Obj | None:
    replicas = spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas
    if replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(name, namespace),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)}},
    }


def horizontal_pod_autoscaler(name: str, namespace: str, spec: Spec) -> Obj | None:
    auto = spec.autoscaling
    if auto is None:
        return None
    source = {"metric": {"name": AUTOSCALING_METRICS[auto.metric]},
              "target": {"type": "AverageValue", "averageValue": str(auto.target)}}
    if auto.min_replicas == 0:
        # With no pods there are no per-pod series: scaling from zero needs a metric of an object that is
        # always there (the Service; e.g. a Prometheus adapter rule summing the pods' series per Service),
        # and the API server accepts minReplicas 0 only with the HPAScaleToZero feature gate.
        describe = {"apiVersion": "v1", "kind": "Service", "name": name}
        metric: Obj = {"type": "Object", "object": {"describedObject": describe, **source}}
    else:
        metric = {"type": "Pods", "pods": source}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(name, namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [metric],
        },
    }
