"""Render the children of a WasmInference: Deployment, Service, PodDisruptionBudget, HPA, monitors.

Pure functions from (name, namespace, spec) to manifests, applied with server-side apply; owner
references are added by the caller.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from kwasi_operator.spec import (
    AUTOSCALING_METRICS,
    DEFAULT_RUNTIME_IMAGE,
    GPU_MEMORY_LABEL,
    GPU_PRODUCT_LABEL,
    Model,
    Obj,
    Spec,
)

INSTANCE_LABEL = "kwasi.dev/wasminference"
MODULE_DIR = "/module"
MODELS_DIR = "/models"
RUNTIME_UID = 10001


def labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kwasi-runtime",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "kwasi-operator",
        INSTANCE_LABEL: name,
    }


def selector(name: str) -> dict[str, str]:
    return {INSTANCE_LABEL: name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(name).items())


def _meta(name: str, namespace: str) -> Obj:
    return {"name": name, "namespace": namespace, "labels": labels(name)}


def _fetch(image: str, url: str, sha256: str, dest: str, volume: str, mount: str) -> Obj:
    """An init container that downloads `url` once into an emptyDir and checks its sha256."""
    return {
        "name": f"fetch-{volume}",
        "image": image,
        "args": ["fetch", "--sha256", sha256, url, dest],
        "volumeMounts": [{"name": volume, "mountPath": mount}],
        "securityContext": _container_security(),
    }


def _container_security() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _module(spec: Spec, runtime_image: str) -> tuple[str, list[Obj], list[Obj], list[Obj]]:
    """(module path in the pod, volumes, mounts, init containers)."""
    m = spec.module
    path = m.get("path", "app.wasm")
    base = posixpath.basename(path)
    mount = {"name": "module", "mountPath": MODULE_DIR, "readOnly": True}
    if "image" in m and m.get("delivery", "ImageVolume") == "ImageVolume":
        volume = {"name": "module", "image": {"reference": m["image"], "pullPolicy": "IfNotPresent"}}
        return posixpath.join(MODULE_DIR, path), [volume], [mount], []
    empty = {"name": "module", "emptyDir": {"sizeLimit": "256Mi"}}
    if "image" in m:  # InitContainer delivery
        init = {
            "name": "copy-module",
            "image": m["image"],
            "command": ["cp", posixpath.join("/", path), posixpath.join(MODULE_DIR, base)],
            "volumeMounts": [{"name": "module", "mountPath": MODULE_DIR}],
            "securityContext": _container_security(),
        }
        return posixpath.join(MODULE_DIR, base), [empty], [mount], [init]
    if "url" in m:
        dest = posixpath.join(MODULE_DIR, base)
        init = _fetch(runtime_image, m["url"], m["sha256"], dest, "module", MODULE_DIR)
        return dest, [empty], [mount], [init]
    cm = m["configMap"]
    volume = {"name": "module", "configMap": {"name": cm["name"], "items": [{"key": cm["key"], "path": base}]}}
    return posixpath.join(MODULE_DIR, base), [volume], [mount], []


def _model(i: int, model: Model, runtime_image: str) -> tuple[str, list[Obj], list[Obj], list[Obj]]:
    """(model path in the pod, volumes, mounts, init containers)."""
    vol = f"model-{i}"
    mount_path = posixpath.join(MODELS_DIR, model.name)
    mount = {"name": vol, "mountPath": mount_path, "readOnly": True}
    src = model.source
    if src.pvc_claim is not None:
        volume = {"name": vol, "persistentVolumeClaim": {"claimName": src.pvc_claim, "readOnly": True}}
        return posixpath.join(mount_path, src.sub_path), [volume], [mount], []
    if src.image is not None:
        volume = {"name": vol, "image": {"reference": src.image, "pullPolicy": "IfNotPresent"}}
        return posixpath.join(mount_path, src.sub_path), [volume], [mount], []
    assert src.url is not None and src.sha256 is not None
    dest = posixpath.join(mount_path, posixpath.basename(src.url.split("?")[0]) or "model")
    init = _fetch(runtime_image, src.url, src.sha256, dest, vol, mount_path)
    return dest, [{"name": vol, "emptyDir": {}}], [mount], [init]


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
        gpu_toleration = {"key": spec.gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"}
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
    module_path, volumes, mounts, inits = _module(spec, image)
    model_paths = []
    for i, model in enumerate(spec.models):
        path, v, m, init = _model(i, model, image)
        model_paths.append(path)
        volumes += v
        mounts += m
        inits += init
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 3}
    container: Obj = {
        "name": "runtime",
        "image": image,
        "args": runtime_args(spec, module_path, model_paths),
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "env": [{"name": "KWASI_CACHE_DIR", "value": "/tmp/kwasi-cache"}, *runtime.get("env", [])],
        "volumeMounts": mounts,
        "livenessProbe": probe,
        "readinessProbe": {**probe, "httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "startupProbe": {**probe, "httpGet": {"path": "/healthz", "port": "http"}, "failureThreshold": 60},
        "securityContext": _container_security(),
    }
    if runtime.get("imagePullPolicy"):
        container["imagePullPolicy"] = runtime["imagePullPolicy"]
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    pod_labels = {**spec.raw.get("podLabels", {}), **labels(name)}
    pod_spec: Obj = {
        "containers": [container],
        "volumes": volumes,
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
    if inits:
        pod_spec["initContainers"] = inits
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
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, namespace), "spec": dep_spec}


def service(name: str, namespace: str, spec: Spec) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace),
        "spec": {
            "selector": selector(name),
            "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(name: str, namespace: str, spec: Spec) -> Obj | None:
    replicas = spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas
    if replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, namespace),
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
        "metadata": _meta(name, namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [metric],
        },
    }


def monitors(name: str, namespace: str, spec: Spec) -> list[Obj]:
    """ServiceMonitor / PodMonitor as asked; the caller drops them when the CRDs are absent."""
    metrics = spec.section("metrics")
    interval = metrics.get("interval", "15s")
    meta = _meta(name, namespace)
    meta["labels"] = {**meta["labels"], **metrics.get("labels", {})}
    out: list[Obj] = []
    endpoint: dict[str, Any] = {"port": "http", "path": "/metrics", "interval": interval}
    if metrics.get("serviceMonitor"):
        out.append({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": meta,
            "spec": {"selector": {"matchLabels": selector(name)}, "endpoints": [endpoint]},
        })
    if metrics.get("podMonitor"):
        out.append({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": meta,
            "spec": {"selector": {"matchLabels": selector(name)}, "podMetricsEndpoints": [endpoint]},
        })
    return out


def render(name: str, namespace: str, spec: Spec, monitoring_available: bool) -> list[Obj]:
    """Every child the spec asks for, in apply order."""
    children = [deployment(name, namespace, spec), service(name, namespace, spec)]
    for optional in (pod_disruption_budget(name, namespace, spec), horizontal_pod_autoscaler(name, namespace, spec)):
        if optional is not None:
            children.append(optional)
    if monitoring_available:
        children += monitors(name, namespace, spec)
    return children
