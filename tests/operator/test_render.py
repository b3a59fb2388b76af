"""What the operator asks the cluster for, from a WasmInference spec (rendering only; the end-to-end
tests against a real API server check that the cluster accepts and schedules it)."""

from __future__ import annotations

from typing import Any

from kwasi_operator.render import deployment, horizontal_pod_autoscaler, pod_disruption_budget, render
from kwasi_operator.spec import Spec

BASE: dict[str, Any] = {
    "module": {"image": "registry.example/app:1", "delivery": "ImageVolume", "path": "app.wasm"},
    "models": [{"name": "default", "encoding": "ggml", "target": "auto",
                "source": {"pvc": {"claimName": "models", "subPath": "smollm2.gguf"}},
                "config": {"ctx-size": 2048}}],
}


def pod(spec: dict[str, Any]) -> dict[str, Any]:
    pod_spec: dict[str, Any] = deployment("app", "ns", Spec.parse(spec))["spec"]["template"]["spec"]
    return pod_spec


def test_cpu_only_has_no_gpu_scheduling() -> None:
    p = pod(BASE)
    c = p["containers"][0]
    assert "resources" not in c and "tolerations" not in p and "nodeSelector" not in p
    assert c["args"][:2] == ["serve", "--module"] and c["args"][2] == "/module/app.wasm"
    i = c["args"].index("--nn-preload")
    assert c["args"][i + 1] == "default:ggml:auto:/models/default/smollm2.gguf"
    assert c["args"][c["args"].index("--nn-config") + 1] == 'default={"ctx-size": 2048}'


def test_gpu_limits_toleration_product_and_memory() -> None:
    spec = {**BASE, "gpu": {"count": 2, "resourceName": "nvidia.com/gpu", "product": "NVIDIA-H100",
                            "memoryMiB": 81559}}
    p = pod(spec)
    assert p["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in p["tolerations"]
    assert p["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100"}
    terms = p["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "nvidia.com/gpu.memory", "operator": "Gt",
                                            "values": ["81558"]}]}]


def test_mig_slice_and_user_scheduling_are_kept() -> None:
    user_term = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
    spec = {**BASE, "gpu": {"count": 1, "resourceName": "nvidia.com/mig-1g.10gb", "memoryMiB": 1000},
            "scheduling": {"nodeSelector": {"pool": "gpu"}, "runtimeClassName": "nvidia",
                           "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                           "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                               "nodeSelectorTerms": [user_term]}}}}}
    p = pod(spec)
    assert p["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": 1}
    # MIG nodes are tainted nvidia.com/gpu like any GPU node; the slice's own name is tolerated as well.
    assert [t["key"] for t in p["tolerations"]] == ["dedicated", "nvidia.com/gpu", "nvidia.com/mig-1g.10gb"]
    assert p["runtimeClassName"] == "nvidia" and p["nodeSelector"] == {"pool": "gpu"}
    assert {"key": "dedicated", "operator": "Exists"} in p["tolerations"]
    exprs = p["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"]
    assert [e["key"] for e in exprs] == ["zone", "nvidia.com/gpu.memory"]
    assert "nvidia.com/gpu.memory" not in str(spec["scheduling"])  # the CR itself is not mutated


def test_pod_is_hardened() -> None:
    p = pod(BASE)
    assert p["securityContext"]["runAsNonRoot"] is True
    assert p["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = p["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert p["automountServiceAccountToken"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in p["containers"][0]["volumeMounts"]


def test_module_delivery_variants() -> None:
    init = pod({**BASE, "module": {"image": "r/app:1", "delivery": "InitContainer", "path": "wasm/app.wasm"}})
    assert init["initContainers"][0]["command"] == ["cp", "/wasm/app.wasm", "/module/app.wasm"]
    url = pod({**BASE, "module": {"url": "https://h/app.wasm", "sha256": "a" * 64, "path": "app.wasm"}})
    assert url["initContainers"][0]["args"] == ["fetch", "--sha256", "a" * 64, "https://h/app.wasm",
                                                "/module/app.wasm"]
    cm = pod({**BASE, "module": {"configMap": {"name": "app", "key": "app.wasm"}, "path": "app.wasm"}})
    assert cm["volumes"][0]["configMap"] == {"name": "app", "items": [{"key": "app.wasm", "path": "app.wasm"}]}


def test_replicas_pdb_and_autoscaling() -> None:
    assert deployment("a", "n", Spec.parse(BASE))["spec"]["replicas"] == 1
    assert pod_disruption_budget("a", "n", Spec.parse(BASE)) is None
    three = Spec.parse({**BASE, "replicas": 3})
    assert deployment("a", "n", three)["spec"]["replicas"] == 3
    assert pod_disruption_budget("a", "n", three) is not None
    auto = Spec.parse({**BASE, "autoscaling": {"minReplicas": 0, "maxReplicas": 4, "metric": "tokensPerSecond",
                                               "target": 50}})
    assert "replicas" not in deployment("a", "n", auto)["spec"]
    hpa = horizontal_pod_autoscaler("a", "n", auto)
    assert hpa is not None and hpa["spec"]["minReplicas"] == 0
    # From zero pods only an object's metric can say "scale up": the Service's.
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Object" and metric["object"]["describedObject"] == {
        "apiVersion": "v1", "kind": "Service", "name": "a"}
    assert metric["object"]["metric"]["name"] == "kwasi_generation_tokens_per_second"
    assert metric["object"]["target"] == {"type": "AverageValue", "averageValue": "50"}
    one = horizontal_pod_autoscaler("a", "n", Spec.parse({**BASE, "autoscaling": {"minReplicas": 1, "maxReplicas": 4}}))
    assert one is not None and one["spec"]["metrics"][0]["type"] == "Pods"
    assert one["spec"]["metrics"][0]["pods"]["metric"]["name"] == "kwasi_requests_running"


def test_monitors_only_when_asked_and_available() -> None:
    spec = Spec.parse({**BASE, "metrics": {"serviceMonitor": True, "podMonitor": True, "labels": {"release": "k"}}})
    kinds = [c["kind"] for c in render("a", "n", spec, {"ServiceMonitor", "PodMonitor"})]
    assert kinds == ["Deployment", "Service", "ServiceMonitor", "PodMonitor"]
    assert [c["kind"] for c in render("a", "n", spec, {"ScaledObject"})] == ["Deployment", "Service"]
