"""A typed view of a WasmInference spec. The CRD (crds/kwasi.dev_wasminferences.yaml) validates and
defaults it; this only gives the renderer names instead of dict lookups."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FIELD_MANAGER = "kwasi-operator"
DEFAULT_RUNTIME_IMAGE = "ghcr.io/kwasi-dev/kwasi-runtime:0.1.0"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"

# The runtime metric behind each autoscaling choice (runtime/kwasi_runtime/serve/metrics.py).
AUTOSCALING_METRICS = {
    "requestsRunning": "kwasi_requests_running",
    "tokensPerSecond": "kwasi_generation_tokens_per_second",
    "queue": "kwasi_requests_waiting",
}

Obj = dict[str, Any]


@dataclass(frozen=True)
class ModelSource:
    pvc_claim: str | None = None
    sub_path: str = ""
    image: str | None = None
    url: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Model:
    name: str
    encoding: str
    target: str
    source: ModelSource
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Gpu:
    count: int
    resource_name: str
    product: str | None
    memory_mib: int | None


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    metric: str
    target: int


@dataclass(frozen=True)
class Spec:
    raw: Mapping[str, Any]
    module: Mapping[str, Any]
    models: tuple[Model, ...]
    replicas: int
    gpu: Gpu | None
    autoscaling: Autoscaling | None
    port: int
    max_concurrency: int
    max_queue: int
    timeout_s: int

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> Spec:
        models = tuple(_model(m) for m in spec.get("models", []))
        gpu_raw = spec.get("gpu")
        gpu = None
        if gpu_raw is not None:
            gpu = Gpu(
                count=int(gpu_raw.get("count", 1)),
                resource_name=gpu_raw.get("resourceName", "nvidia.com/gpu"),
                product=gpu_raw.get("product"),
                memory_mib=gpu_raw.get("memoryMiB"),
            )
        auto_raw = spec.get("autoscaling")
        autoscaling = None
        if auto_raw is not None:
            autoscaling = Autoscaling(
                min_replicas=int(auto_raw.get("minReplicas", 1)),
                max_replicas=int(auto_raw["maxReplicas"]),
                metric=auto_raw.get("metric", "requestsRunning"),
                target=int(auto_raw.get("target", 4)),
            )
        server = spec.get("server", {})
        return cls(
            raw=spec,
            module=spec["module"],
            models=models,
            replicas=int(spec.get("replicas", 1)),
            gpu=gpu,
            autoscaling=autoscaling,
            port=int(server.get("port", 8080)),
            max_concurrency=int(server.get("maxConcurrency", 8)),
            max_queue=int(server.get("maxQueue", 64)),
            timeout_s=int(server.get("timeoutSeconds", 300)),
        )

    def section(self, name: str) -> Mapping[str, Any]:
        value = self.raw.get(name)
        return value if isinstance(value, Mapping) else {}


def _model(raw: Mapping[str, Any]) -> Model:
    src = raw["source"]
    pvc = src.get("pvc") or {}
    image = src.get("image") or {}
    return Model(
        name=raw["name"],
        encoding=raw["encoding"],
        target=raw.get("target", "auto"),
        source=ModelSource(
            pvc_claim=pvc.get("claimName"),
            sub_path=pvc.get("subPath") or image.get("path") or "",
            image=image.get("reference"),
            url=src.get("url"),
            sha256=src.get("sha256"),
        ),
        config=raw.get("config") or {},
    )
