"""A typed view of a WasmInference spec. The CRD (crds/kwasi.dev_wasminferences.yaml) validates and
defaults it; this only gives the renderer names instead of dict lookups, and the defaults that depend on
other fields (rollout, termination grace)."""

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
    "kvCacheUsage": "kwasi_kv_cache_usage_ratio",  # 0-1 per model; `target` is in percent
    "sessions": "kwasi_nnrpc_sessions",  # the model server's clients (spec.modelServer.autoscaling only)
}
PRESTOP_SLEEP_S = 5  # before SIGTERM: the endpoint leaves the Service before the runtime stops accepting
EXIT_MARGIN_S = 10  # after the runtime's drain: time to cancel what is left and exit

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
    products: tuple[str, ...] = ()  # any of these (node affinity), beside or instead of `product`


@dataclass(frozen=True)
class Keda:
    server_address: str | None
    query: str | None
    polling_s: int
    cooldown_s: int


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    metric: str
    target: int
    engine: str = "Auto"  # Auto (KEDA when installed and configured, else HPA) | HPA | KEDA
    activation: int = 0  # KEDA: scale from zero above this value of the metric
    keda: Keda | None = None


@dataclass(frozen=True)
class Rollout:
    strategy: str  # RollingUpdate | Recreate
    max_surge: int | str
    max_unavailable: int | str


@dataclass(frozen=True)
class ModelCache:
    """A volume shared by the replicas for downloaded (url) models: each file is fetched once."""

    claim_name: str | None  # an existing claim; else the operator creates <name>-model-cache
    size: str | None
    storage_class: str | None
    access_mode: str


@dataclass(frozen=True)
class InferencePool:
    picker_name: str
    picker_port: int
    failure_mode: str
    model: str | None


@dataclass(frozen=True)
class ModelServer:
    """spec.modelServer: the models in their own (GPU) Deployment behind NNRPC with TLS; the guests elsewhere."""

    replicas: int
    autoscaling: Autoscaling | None
    port: int
    metrics_port: int
    max_concurrency: int
    tls_secret: str | None  # a Secret with tls.crt, tls.key and ca.crt, made by the user
    issuer: Mapping[str, Any] | None  # or a cert-manager issuerRef: the operator asks cert-manager for it
    raw: Mapping[str, Any]

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ModelServer:
        tls = raw.get("tls") or {}
        auto = raw.get("autoscaling")
        return cls(
            replicas=int(raw.get("replicas", 1)),
            autoscaling=_autoscaling(server_autoscaling(auto)) if auto is not None else None,
            port=int(raw.get("port", 50051)),
            metrics_port=int(raw.get("metricsPort", 9090)),
            max_concurrency=int(raw.get("maxConcurrency", 16)),
            tls_secret=tls.get("secretName"),
            issuer=tls.get("issuerRef"),
            raw=raw,
        )


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
    drain_s: int = 30
    startup_s: int = 900
    rollout: Rollout = Rollout("RollingUpdate", 0, 1)
    termination_grace_s: int = 45
    model_cache: ModelCache | None = None
    inference_pool: InferencePool | None = None
    model_server: ModelServer | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> Spec:
        gpu = _gpu(spec.get("gpu"))
        server = spec.get("server", {})
        drain_s = int(server.get("drainSeconds", 30))
        return cls(
            raw=spec,
            module=spec["module"],
            models=tuple(_model(m) for m in spec.get("models", [])),
            replicas=int(spec.get("replicas", 1)),
            gpu=gpu,
            autoscaling=_autoscaling(spec.get("autoscaling")),
            port=int(server.get("port", 8080)),
            max_concurrency=int(server.get("maxConcurrency", 8)),
            max_queue=int(server.get("maxQueue", 64)),
            timeout_s=int(server.get("timeoutSeconds", 300)),
            drain_s=drain_s,
            startup_s=int(server.get("startupSeconds", 900)),
            rollout=_rollout(spec.get("rollout") or {}, gpu is not None),
            termination_grace_s=int(spec.get("terminationGracePeriodSeconds")
                                    or PRESTOP_SLEEP_S + drain_s + EXIT_MARGIN_S),
            model_cache=_model_cache(spec.get("modelCache")),
            inference_pool=_inference_pool(spec.get("inferencePool")),
            model_server=ModelServer.parse(spec["modelServer"]) if spec.get("modelServer") is not None else None,
        )

    def section(self, name: str) -> Mapping[str, Any]:
        value = self.raw.get(name)
        return value if isinstance(value, Mapping) else {}

    # With spec.modelServer one WasmInference is two sides, each rendered as a WasmInference of its own would be.
    def guest_side(self) -> Spec:
        """The guests: no models, GPUs, GPU scheduling or model cache here (they are the model server's)."""
        raw = {k: v for k, v in self.raw.items() if k not in ("models", "gpu", "modelCache", "scheduling")}
        return Spec.parse({**raw, "modelServer": None})

    def server_side(self) -> Spec:
        """The model server: the models, GPUs, scheduling and cache; its own replicas, autoscaling, resources."""
        server = self.model_server
        assert server is not None
        drop = ("replicas", "autoscaling", "resources", "inferencePool", "metrics", "modelServer")
        raw: dict[str, Any] = {k: v for k, v in self.raw.items() if k not in drop}
        if server.autoscaling is not None:
            raw["autoscaling"] = server_autoscaling(server.raw["autoscaling"])
        else:
            raw["replicas"] = server.replicas
        raw["resources"] = server.raw.get("resources") or {}
        return Spec.parse(raw)


def server_autoscaling(raw: Mapping[str, Any]) -> dict[str, Any]:
    """spec.modelServer.autoscaling in spec.autoscaling's terms: its own defaults, always an HPA."""
    return {"metric": "tokensPerSecond", "target": 100, **raw, "engine": "HPA"}


def _gpu(raw: Mapping[str, Any] | None) -> Gpu | None:
    if raw is None:
        return None
    return Gpu(
        count=int(raw.get("count", 1)),
        resource_name=raw.get("resourceName", "nvidia.com/gpu"),
        product=raw.get("product"),
        memory_mib=raw.get("memoryMiB"),
        products=tuple(raw.get("products") or ()),
    )


def _autoscaling(raw: Mapping[str, Any] | None) -> Autoscaling | None:
    if raw is None:
        return None
    keda_raw = raw.get("keda")
    keda = None
    if keda_raw is not None:
        keda = Keda(
            server_address=keda_raw.get("serverAddress"),
            query=keda_raw.get("query"),
            polling_s=int(keda_raw.get("pollingIntervalSeconds", 15)),
            cooldown_s=int(keda_raw.get("cooldownSeconds", 300)),
        )
    return Autoscaling(
        min_replicas=int(raw.get("minReplicas", 1)),
        max_replicas=int(raw["maxReplicas"]),
        metric=raw.get("metric", "requestsRunning"),
        target=int(raw.get("target", 4)),
        engine=raw.get("engine", "Auto"),
        activation=int(raw.get("activationTarget", 0)),
        keda=keda,
    )


def _rollout(raw: Mapping[str, Any], gpu: bool) -> Rollout:
    # On a GPU pool a surge pod waits for a GPU the old pod holds: replace in place by default (one
    # replica at a time, no spare GPU). Without GPUs: surge one first, so serving never dips.
    surge, unavailable = (0, 1) if gpu else (1, 0)
    return Rollout(
        strategy=raw.get("strategy", "RollingUpdate"),
        max_surge=raw.get("maxSurge", surge),
        max_unavailable=raw.get("maxUnavailable", unavailable),
    )


def _model_cache(raw: Mapping[str, Any] | None) -> ModelCache | None:
    if raw is None:
        return None
    return ModelCache(
        claim_name=raw.get("claimName"),
        size=raw.get("size"),
        storage_class=raw.get("storageClassName"),
        access_mode=raw.get("accessMode", "ReadWriteMany"),
    )


def _inference_pool(raw: Mapping[str, Any] | None) -> InferencePool | None:
    if raw is None:
        return None
    picker = raw["endpointPicker"]
    return InferencePool(
        picker_name=picker["name"],
        picker_port=int(picker.get("port", 9002)),
        failure_mode=picker.get("failureMode", "FailClose"),
        model=raw.get("model"),
    )


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
