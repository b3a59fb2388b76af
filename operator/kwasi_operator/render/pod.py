"""The Deployment: one kwasi-runtime container per pod, hardened, with GPU scheduling from spec.gpu."""

from __future__ import annotations

import json

from kwasi_operator.render.meta import labels, meta, selector
from kwasi_operator.render.volumes import PodFiles, container_security, model_files, module_files
from kwasi_operator.spec import DEFAULT_RUNTIME_IMAGE, GPU_MEMORY_LABEL, GPU_PRODUCT_LABEL, Obj, Spec

RUNTIME_UID = 10001
GPU_TAINT = "nvidia.com/gpu"


def runtime_args(spec: Spec, module_path: str, model_paths: list[str]) -> list[str]:
    args = [
        "serve",
        "--module", module_path,
        "--port", str(spec.port),
        "--max-concurrency", str(spec.max_concurrency),
        "--max-queue", str(spec.max_queue),
        "--timeout", str(spec.timeout_s),
    ]
    for model, path in zip(spec.models, model_paths, strict=True):
        args += ["--nn-preload", f"{model.name}:{model.encoding}:{model.target}:{path}"]
        if model.config:
            args += ["--nn-config", f"{model.name}={json.dumps(dict(model.config), sort_keys=True)}"]
    args += list(spec.section("runtime").get("args", []))
    return args


def _resources(spec: Spec) -> Obj:
    res = spec.section("resources")
    limits = dict(res.get("limits", {}))
    requests = dict(res.get("requests", {}))
    if spec.gpu is not None:
        # Extended resources: the limit is the request, and GPUs are integers.
        limits[spec.gpu.resource_name] = spec.gpu.count
    out: Obj = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def _scheduling(spec: Spec) -> Obj:
    sched = spec.section("scheduling")
    pod: Obj = {}
    node_selector = dict(sched.get("nodeSelector", {}))
    tolerations = list(sched.get("tolerations", []))
    affinity = json.loads(json.dumps(sched.get("affinity", {})))  # deep copy: we add to it
    if spec.gpu is not None:
        # GPU nodes carry the nvidia.com/gpu taint whatever they advertise (MIG slices too); a taint named
        # after another resource (what the ExtendedResourceToleration admission plugin tolerates) is kept.
        for key in dict.fromkeys((GPU_TAINT, spec.gpu.resource_name)):
            gpu_toleration = {"key": key, "operator": "Exists", "effect": "NoSchedule"}
            if gpu_toleration not in tolerations:
                tolerations.append(gpu_toleration)
        if spec.gpu.product:
            node_selector[GPU_PRODUCT_LABEL] = spec.gpu.product
        if spec.gpu.memory_mib:
            # Node affinity has only Gt: "at least N MiB" is "more than N-1".
            expr = {"key": GPU_MEMORY_LABEL, "operator": "Gt", "values": [str(spec.gpu.memory_mib - 1)]}
            required = affinity.setdefault("nodeAffinity", {}).setdefault(
                "requiredDuringSchedulingIgnoredDuringExecution", {"nodeSelectorTerms": []}
            )
            terms = required.setdefault("nodeSelectorTerms", [])
            if not terms:
                terms.append({"matchExpressions": []})
            for term in terms:  # terms are ORed, so each must carry the memory floor
                term.setdefault("matchExpressions", []).append(expr)
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    if affinity:
        pod["affinity"] = affinity
    for key in ("runtimeClassName", "priorityClassName"):
        if sched.get(key):
            pod[key] = sched[key]
    return pod


def deployment(name: str, namespace: str, spec: Spec) -> Obj:
    runtime = spec.section("runtime")
    image = runtime.get("image") or DEFAULT_RUNTIME_IMAGE
    files = PodFiles()
    module_path = module_files(spec, image, files)
    model_paths = [model_files(i, m, image, files) for i, m in enumerate(spec.models)]
    files.add({"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": "/tmp"})
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 3}
    container: Obj = {
        "name": "runtime",
        "image": image,
        "args": runtime_args(spec, module_path, model_paths),
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "env": [{"name": "KWASI_CACHE_DIR", "value": "/tmp/kwasi-cache"}, *runtime.get("env", [])],
        "volumeMounts": files.mounts,
        "livenessProbe": probe,
        "readinessProbe": {**probe, "httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "startupProbe": {**probe, "httpGet": {"path": "/healthz", "port": "http"}, "failureThreshold": 60},
        "securityContext": container_security(),
    }
    if runtime.get("imagePullPolicy"):
        container["imagePullPolicy"] = runtime["imagePullPolicy"]
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    pod_labels = {**spec.raw.get("podLabels", {}), **labels(name)}
    pod_spec: Obj = {
        "containers": [container],
        "volumes": files.volumes,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_UID,
            "runAsGroup": RUNTIME_UID,
            "fsGroup": RUNTIME_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": False,
        **_scheduling(spec),
    }
    if files.inits:
        pod_spec["initContainers"] = files.inits
    for c in [container, *files.inits]:
        # A container that wrote no termination message is described by its log's tail: the runtime's and
        # `kwasi-runtime fetch`'s last line is the error, which the status then quotes (pod_failures).
        c["terminationMessagePolicy"] = "FallbackToLogsOnError"
    if spec.raw.get("imagePullSecrets"):
        pod_spec["imagePullSecrets"] = spec.raw["imagePullSecrets"]
    if spec.raw.get("serviceAccountName"):
        pod_spec["serviceAccountName"] = spec.raw["serviceAccountName"]
    template_meta: Obj = {"labels": pod_labels}
    if spec.raw.get("podAnnotations"):
        template_meta["annotations"] = dict(spec.raw["podAnnotations"])
    dep_spec: Obj = {
        "selector": {"matchLabels": selector(name)},
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if spec.autoscaling is None:
        # With autoscaling the HPA owns the replica count; applying one here would fight it.
        dep_spec["replicas"] = spec.replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(name, namespace), "spec": dep_spec}
