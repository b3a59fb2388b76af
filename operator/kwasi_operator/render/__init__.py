"""Render the children of a WasmInference: Deployment, Service, PodDisruptionBudget, HPA, monitors.

Pure functions from (name, namespace, spec) to manifests, applied with server-side apply; owner
references are added by the caller. One module per concern: ``meta`` (names, labels), ``volumes``
(module and model sources), ``pod`` (the Deployment), ``scaling`` (PDB, HPA), ``serving`` (Service,
monitors).
"""

from __future__ import annotations

from collections.abc import Collection

from kwasi_operator import kinds
from kwasi_operator.render.meta import INSTANCE_LABEL, MANAGED_BY, labels, selector, selector_string
from kwasi_operator.render.pod import deployment, runtime_args
from kwasi_operator.render.scaling import horizontal_pod_autoscaler, pod_disruption_budget
from kwasi_operator.render.serving import monitors, service
from kwasi_operator.spec import Obj, Spec

__all__ = [
    "INSTANCE_LABEL", "MANAGED_BY", "deployment", "horizontal_pod_autoscaler", "labels", "monitors",
    "pod_disruption_budget", "render", "runtime_args", "selector", "selector_string", "service",
]


def render(name: str, namespace: str, spec: Spec, available: Collection[str] = ()) -> list[Obj]:
    """Every child the spec asks for, in apply order. ``available``: kinds from other projects' CRDs that
    are installed (a child of another kind is left out)."""
    children = [deployment(name, namespace, spec), service(name, namespace, spec)]
    for optional in (pod_disruption_budget(name, namespace, spec), horizontal_pod_autoscaler(name, namespace, spec)):
        if optional is not None:
            children.append(optional)
    children += monitors(name, namespace, spec)
    return [c for c in children if not kinds.BY_KIND[c["kind"]].crd or c["kind"] in available]
