"""Render the children of a WasmInference: the model-cache claim, Deployment, Service, PodDisruptionBudget,
HPA or KEDA ScaledObject, monitors, InferencePool.

Pure functions from (name, namespace, spec) to manifests, applied with server-side apply; owner
references are added by the caller. One module per concern: ``meta`` (names, labels), ``volumes``
(module and model sources, the model cache), ``scheduling`` (where pods may run), ``pod`` (the
Deployment), ``scaling`` (PDB, HPA, ScaledObject), ``serving`` (Service, monitors, InferencePool),
``nnrpc`` and ``model_server`` (spec.modelServer: the models in a Deployment of their own, reached over NNRPC).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from kwasi_operator import kinds
from kwasi_operator.render.meta import (
    INSTANCE_LABEL,
    MANAGED_BY,
    child_name,
    labels,
    owner_key,
    selector,
    selector_string,
)
from kwasi_operator.render.model_server import render_model_server
from kwasi_operator.render.nnrpc import SERVER_LABEL, server_host, server_name, server_selector
from kwasi_operator.render.pod import deployment, runtime_args
from kwasi_operator.render.scaling import (
    horizontal_pod_autoscaler,
    pod_disruption_budget,
    prometheus_query,
    scaled_object,
    uses_keda,
)
from kwasi_operator.render.serving import endpoint_picker_flags, inference_pool, monitors, service
from kwasi_operator.render.volumes import cache_claim_name, model_cache_claim
from kwasi_operator.spec import Obj, Spec

__all__ = [
    "INSTANCE_LABEL",
    "MANAGED_BY",
    "SERVER_LABEL",
    "cache_claim_name",
    "child_name",
    "deployment",
    "endpoint_picker_flags",
    "horizontal_pod_autoscaler",
    "inference_pool",
    "labels",
    "model_cache_claim",
    "monitors",
    "owner_key",
    "pod_disruption_budget",
    "prometheus_query",
    "render",
    "runtime_args",
    "scaled_object",
    "selector",
    "selector_string",
    "server_host",
    "server_name",
    "server_selector",
    "service",
    "uses_keda",
]


def render(name: str, namespace: str, spec: Spec, available: Collection[str] = (),
           monitor_labels: Mapping[str, str] | None = None) -> list[Obj]:
    """Every child the spec asks for, in apply order (kinds.CHILDREN). ``available``: kinds from other
    projects' CRDs that are installed (a child of another such kind is left out); ``monitor_labels``: the
    operator's --monitor-label, on every monitor."""
    keda = uses_keda(spec, available)
    children = [
        model_cache_claim(name, namespace, spec),
        deployment(name, namespace, spec),
        service(name, namespace, spec),
        pod_disruption_budget(name, namespace, spec),
        scaled_object(name, namespace, spec) if keda else horizontal_pod_autoscaler(name, namespace, spec),
        *monitors(name, namespace, spec, monitor_labels),
        inference_pool(name, namespace, spec),
        *render_model_server(name, namespace, spec),
    ]
    return [c for c in children if c is not None and (not kinds.BY_KIND[c["kind"]].crd or c["kind"] in available)]
