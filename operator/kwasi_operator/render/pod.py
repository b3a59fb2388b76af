"""The Deployment: one kwasi-runtime container per pod, hardened, with GPU scheduling from spec.gpu, a
rollout that needs no spare GPU, a termination grace that covers the runtime's drain, a startup probe
sized for model load, and the user's escape hatches (volumes, env from Secrets, …)."""

from __future__ import annotations

import copy
import json
import math

from kwasi_operator import kinds
from kwasi_operator.render.meta import labels, manifest, selector
from kwasi_operator.render.nnrpc import client_args
from kwasi_operator.render.scheduling import scheduling
from kwasi_operator.render.volumes import PodFiles, cache_claim_name, container_security, model_files, module_files
from kwasi_operator.spec import DEFAULT_RUNTIME_IMAGE, PRESTOP_SLEEP_S, Obj, Spec

RUNTIME_UID = 10001
PROBE_PERIOD_S = 10
# A Deployment is "failed to progress" after this long without progress: more than a model may take to load.
PROGRESS_MARGIN_S = 300


def runtime_args(spec: Spec, module_path: str, model_paths: list[str], remote: list[str] | None = None) -> list[str]:
    """`serve`'s arguments; `remote`: the flags that put the models on spec.modelServer's server instead."""
    args = [
        "serve",
        "--module", module_path,
        "--port", str(spec.port),
        "--max-concurrency", str(spec.max_concurrency),
        "--max-queue", str(spec.max_queue),
        "--timeout", str(spec.timeout_s),
        "--grace-period", str(spec.drain_s),
    ]
    args += preload_args(spec, model_paths) + (remote or [])
    args += list(spec.section("runtime").get("args", []))
    return args


def preload_args(spec: Spec, model_paths: list[str]) -> list[str]:
    """--nn-preload / --nn-config for every model (the runtime's serve, or spec.modelServer's server)."""
    args: list[str] = []
    for model, path in zip(spec.models, model_paths, strict=True):
        args += ["--nn-preload", f"{model.name}:{model.encoding}:{model.target}:{path}"]
        if model.config:
            args += ["--nn-config", f"{model.name}={json.dumps(dict(model.config), sort_keys=True)}"]
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


def _probes(spec: Spec) -> Obj:
    """Liveness on /healthz (answers while models load); readiness on /readyz. The startup probe waits on
    /readyz for up to server.startupSeconds, so liveness starts only once the models are loaded, and a load
    that hangs longer is restarted."""
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 3}
    ready = {**probe, "httpGet": {"path": "/readyz", "port": "http"}}
    return {
        "livenessProbe": probe,
        "readinessProbe": {**ready, "periodSeconds": 5},
        "startupProbe": {**ready, "failureThreshold": max(1, math.ceil(spec.startup_s / PROBE_PERIOD_S))},
    }


def _strategy(spec: Spec) -> Obj:
    rollout = spec.rollout
    if rollout.strategy == "Recreate":
        return {"type": "Recreate"}
    return {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": rollout.max_surge, "maxUnavailable": rollout.max_unavailable}}


def deployment(name: str, namespace: str, spec: Spec) -> Obj:
    """The guests' Deployment. With spec.modelServer it is CPU-only, without models, and sends every WASI-NN
    call to the model server (render/model_server.py renders that one from this, on the other side's spec)."""
    whole = spec
    if spec.model_server is not None:
        spec = spec.guest_side()
    runtime = spec.section("runtime")
    image = runtime.get("image") or DEFAULT_RUNTIME_IMAGE
    files = PodFiles()
    module_path = module_files(spec, image, files)
    claim = cache_claim_name(name, spec)
    model_paths = [model_files(i, m, image, files, claim) for i, m in enumerate(spec.models)]
    remote = client_args(name, namespace, whole, files) if whole.model_server is not None else None
    files.add({"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": "/tmp"})
    container: Obj = {
        "name": "runtime",
        "image": image,
        "args": runtime_args(spec, module_path, model_paths, remote),
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "env": [{"name": "KWASI_CACHE_DIR", "value": "/tmp/kwasi-cache"}, *copy.deepcopy(runtime.get("env", []))],
        "volumeMounts": [*files.mounts, *copy.deepcopy(spec.raw.get("volumeMounts", []))],
        **_probes(spec),
        # The endpoint leaves the Service before SIGTERM; then the runtime drains for server.drainSeconds.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}},
        "securityContext": container_security(),
    }
    if runtime.get("envFrom"):
        container["envFrom"] = copy.deepcopy(runtime["envFrom"])
    if runtime.get("imagePullPolicy"):
        container["imagePullPolicy"] = runtime["imagePullPolicy"]
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    pod_labels = {**spec.raw.get("podLabels", {}), **labels(name)}
    pod_spec: Obj = {
        "containers": [container],
        "volumes": [*files.volumes, *copy.deepcopy(spec.raw.get("volumes", []))],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_UID,
            "runAsGroup": RUNTIME_UID,
            "fsGroup": RUNTIME_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": spec.termination_grace_s,
        **scheduling(name, spec),
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
        "strategy": _strategy(spec),
        "progressDeadlineSeconds": max(600, spec.startup_s + PROGRESS_MARGIN_S),
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if spec.autoscaling is None:
        # With autoscaling the HPA (or KEDA) owns the replica count; applying one here would fight it.
        dep_spec["replicas"] = spec.replicas
    return manifest(kinds.DEPLOYMENT, name, namespace, dep_spec)
