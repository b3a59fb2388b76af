"""Where the pods may run: GPU tolerations, product and memory affinity, the user's own scheduling fields."""

from __future__ import annotations

import copy

from kwasi_operator.render.meta import selector
from kwasi_operator.spec import GPU_MEMORY_LABEL, GPU_PRODUCT_LABEL, Obj, Spec

GPU_TAINT = "nvidia.com/gpu"
HOSTNAME = "kubernetes.io/hostname"
# Pod fields of spec.scheduling passed through as they are.
PASS_THROUGH = ("runtimeClassName", "priorityClassName", "schedulerName", "topologySpreadConstraints")


def _require(affinity: Obj, expr: Obj) -> None:
    """Add ``expr`` to every required node-selector term (terms are ORed, so each must carry it)."""
    required = affinity.setdefault("nodeAffinity", {}).setdefault(
        "requiredDuringSchedulingIgnoredDuringExecution", {"nodeSelectorTerms": []})
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({"matchExpressions": []})
    for term in terms:
        term.setdefault("matchExpressions", []).append(expr)


def scheduling(name: str, spec: Spec) -> Obj:
    """The pod spec's scheduling fields."""
    sched = spec.section("scheduling")
    pod: Obj = {}
    node_selector = dict(sched.get("nodeSelector", {}))
    tolerations = list(sched.get("tolerations", []))
    affinity = copy.deepcopy(dict(sched.get("affinity", {})))  # we add to it; the CR stays as it is
    gpu = spec.gpu
    if gpu is not None:
        # GPU nodes carry the nvidia.com/gpu taint whatever they advertise (MIG slices too); a taint named
        # after another resource (what the ExtendedResourceToleration admission plugin tolerates) is kept.
        for key in dict.fromkeys((GPU_TAINT, gpu.resource_name)):
            toleration = {"key": key, "operator": "Exists", "effect": "NoSchedule"}
            if toleration not in tolerations:
                tolerations.append(toleration)
        if gpu.product:
            node_selector[GPU_PRODUCT_LABEL] = gpu.product
        if gpu.products:
            _require(affinity, {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": list(gpu.products)})
        if gpu.memory_mib:
            # Node affinity has only Gt: "at least N MiB" is "more than N-1".
            _require(affinity, {"key": GPU_MEMORY_LABEL, "operator": "Gt", "values": [str(gpu.memory_mib - 1)]})
    cache = spec.model_cache
    if cache is not None and cache.access_mode == "ReadWriteOnce":
        # A ReadWriteOnce cache mounts on one node only: the replicas go where it is (the first one is free).
        term = {"labelSelector": {"matchLabels": selector(name)}, "topologyKey": HOSTNAME}
        pod_affinity = affinity.setdefault("podAffinity", {})
        pod_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", []).append(term)
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    if affinity:
        pod["affinity"] = affinity
    for key in PASS_THROUGH:
        if sched.get(key):
            pod[key] = copy.deepcopy(sched[key])
    return pod
