"""What the operator asks the cluster for, from a WasmInference spec (rendering only; the end-to-end
tests against a real API server check that the cluster accepts and schedules it)."""

from __future__ import annotations

from typing import Any

from kwasi_operator.render import (
    deployment,
    horizontal_pod_autoscaler,
    inference_pool,
    pod_disruption_budget,
    render,
    scaled_object,
)
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


def test_rollout_needs_no_spare_gpu_and_grace_covers_the_drain() -> None:
    gpu = deployment("a", "n", Spec.parse({**BASE, "gpu": {"count": 1}}))["spec"]
    assert gpu["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    cpu = deployment("a", "n", Spec.parse(BASE))["spec"]
    assert cpu["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}  # no scarce resource
    recreate = deployment("a", "n", Spec.parse({**BASE, "rollout": {"strategy": "Recreate"}}))["spec"]
    assert recreate["strategy"] == {"type": "Recreate"}
    spec = Spec.parse({**BASE, "server": {"drainSeconds": 120, "startupSeconds": 1800}})
    d = deployment("a", "n", spec)["spec"]
    pod_spec, [c] = d["template"]["spec"], d["template"]["spec"]["containers"]
    assert c["args"][c["args"].index("--grace-period") + 1] == "120"
    assert pod_spec["terminationGracePeriodSeconds"] == 5 + 120 + 10  # preStop pause + drain + exit
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    # Liveness only once the models are loaded (readyz), for up to startupSeconds.
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] == 1800
    assert d["progressDeadlineSeconds"] > 1800
    fixed = Spec.parse({**BASE, "terminationGracePeriodSeconds": 600})
    assert deployment("a", "n", fixed)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 600


def test_pod_escape_hatches_pass_through() -> None:
    spread = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
               "labelSelector": {"matchLabels": {"kwasi.dev/wasminference": "a"}}}]
    key = {"name": "KWASI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}
    spec = {**BASE, "volumes": [{"name": "certs", "secret": {"secretName": "ca"}}],
            "volumeMounts": [{"name": "certs", "mountPath": "/etc/certs", "readOnly": True}],
            "runtime": {"env": [key], "envFrom": [{"secretRef": {"name": "extra"}}]},
            "scheduling": {"topologySpreadConstraints": spread, "priorityClassName": "inference",
                           "schedulerName": "gpu-scheduler"},
            "imagePullSecrets": [{"name": "registry"}],
            "gpu": {"count": 1, "products": ["NVIDIA-A100-SXM4-40GB", "NVIDIA-H100-80GB-HBM3"]}}
    p = pod(spec)
    c = p["containers"][0]
    assert {"name": "certs", "secret": {"secretName": "ca"}} in p["volumes"]
    assert c["volumeMounts"][-1] == {"name": "certs", "mountPath": "/etc/certs", "readOnly": True}
    assert key in c["env"] and c["envFrom"] == [{"secretRef": {"name": "extra"}}]
    assert p["topologySpreadConstraints"] == spread and p["priorityClassName"] == "inference"
    assert p["schedulerName"] == "gpu-scheduler" and p["imagePullSecrets"] == [{"name": "registry"}]
    [term] = p["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.product", "operator": "In",
                                         "values": ["NVIDIA-A100-SXM4-40GB", "NVIDIA-H100-80GB-HBM3"]}]


def test_keda_scaled_object_when_installed_else_hpa() -> None:
    auto = {"minReplicas": 0, "maxReplicas": 4, "metric": "queue", "target": 3, "activationTarget": 1,
            "keda": {"serverAddress": "http://prometheus:9090", "cooldownSeconds": 120}}
    spec = Spec.parse({**BASE, "autoscaling": auto})
    kinds = [c["kind"] for c in render("a", "n", spec, {"ScaledObject"})]
    assert kinds == ["Deployment", "Service", "ScaledObject"]  # no HPA: KEDA makes its own
    assert [c["kind"] for c in render("a", "n", spec)] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
    hpa_only = Spec.parse({**BASE, "autoscaling": {**auto, "engine": "HPA"}})
    assert "ScaledObject" not in [c["kind"] for c in render("a", "n", hpa_only, {"ScaledObject"})]
    so = scaled_object("a", "n", spec)["spec"]
    assert so["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "a"}
    assert (so["minReplicaCount"], so["maxReplicaCount"], so["cooldownPeriod"]) == (0, 4, 120)
    [trigger] = so["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {"serverAddress": "http://prometheus:9090",
                                   "query": 'sum(kwasi_requests_waiting{namespace="n",wasminference="a"})',
                                   "threshold": "3", "activationThreshold": "1"}
    kv = Spec.parse({**BASE, "autoscaling": {**auto, "metric": "kvCacheUsage", "target": 80}})
    [kv_trigger] = scaled_object("a", "n", kv)["spec"]["triggers"]
    assert kv_trigger["metricType"] == "Value"
    assert kv_trigger["metadata"]["query"] == '100 * avg(kwasi_kv_cache_usage_ratio{namespace="n",wasminference="a"})'
    kv_hpa = horizontal_pod_autoscaler("a", "n", kv)
    assert kv_hpa is not None and kv_hpa["spec"]["metrics"][0]["object"]["target"]["averageValue"] == "800m"


def test_monitors_label_series_with_the_object_and_take_default_labels() -> None:
    spec = Spec.parse({**BASE, "metrics": {"serviceMonitor": True, "podMonitor": True, "labels": {"release": "k"}}})
    service_monitor, pod_monitor = render("a", "n", spec, {"ServiceMonitor", "PodMonitor"},
                                          {"release": "default", "team": "ml"})[2:]
    for monitor, endpoints in ((service_monitor, "endpoints"), (pod_monitor, "podMetricsEndpoints")):
        assert monitor["metadata"]["labels"]["release"] == "k"  # the spec's own label wins
        assert monitor["metadata"]["labels"]["team"] == "ml"
        assert monitor["metadata"]["labels"]["kwasi.dev/wasminference"] == "a"
        [endpoint] = monitor["spec"][endpoints]
        # The pod label kwasi.dev/wasminference as Prometheus' Kubernetes discovery names it: the series label
        # the dashboards and the default KEDA query select on.
        assert endpoint["relabelings"] == [{"sourceLabels": ["__meta_kubernetes_pod_label_kwasi_dev_wasminference"],
                                            "targetLabel": "wasminference"}]


def test_inference_pool_selects_the_pods_and_names_the_metrics() -> None:
    spec = Spec.parse({**BASE, "server": {"port": 8000},
                       "inferencePool": {"endpointPicker": {"name": "chat-epp", "port": 9002}}})
    assert "InferencePool" not in [c["kind"] for c in render("a", "n", spec)]  # CRD absent: not rendered
    pool = inference_pool("a", "n", spec)
    assert pool is not None and pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"] == {"selector": {"matchLabels": {"kwasi.dev/wasminference": "a"}},
                            "targetPorts": [{"number": 8000}],
                            "endpointPickerRef": {"name": "chat-epp", "port": {"number": 9002},
                                                  "failureMode": "FailClose"}}
    flags = pool["metadata"]["annotations"]["kwasi.dev/endpoint-picker-flags"].split()
    assert 'kwasi_requests_waiting{model="default",module="openai_chat"}' in flags[0]
    assert flags[2] == '--kv-cache-usage-percentage-metric=kwasi_kv_cache_usage_ratio{model="default"}'


def test_model_cache_holds_url_models_once_per_claim() -> None:
    url_model = {"name": "m", "encoding": "ggml", "source": {"url": "https://h/x/smollm2.gguf?v=1", "sha256": "b" * 64}}
    spec = Spec.parse({**BASE, "models": [url_model], "replicas": 2,
                       "modelCache": {"size": "20Gi", "accessMode": "ReadWriteOnce", "storageClassName": "fast"}})
    claim, dep = render("a", "n", spec)[:2]
    assert claim["kind"] == "PersistentVolumeClaim" and claim["metadata"]["name"] == "a-model-cache"
    assert claim["metadata"]["labels"]["kwasi.dev/wasminference"] == "a"  # how its events find the owner
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}},
                             "storageClassName": "fast"}
    p = dep["spec"]["template"]["spec"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "a-model-cache"}} in p["volumes"]
    [init] = p["initContainers"]  # the module comes from an image volume
    dest = f"/model-cache/{'b' * 64}/smollm2.gguf"
    assert init["command"] == ["flock", f"/model-cache/.{'b' * 64}.lock", "kwasi-runtime"]
    assert init["args"] == ["fetch", "--sha256", "b" * 64, "https://h/x/smollm2.gguf?v=1", dest]
    c = p["containers"][0]
    assert c["args"][c["args"].index("--nn-preload") + 1] == f"m:ggml:auto:{dest}"
    assert {"name": "model-cache", "mountPath": "/model-cache", "readOnly": True} in c["volumeMounts"]
    # ReadWriteOnce: the replicas go to the node the volume is on.
    [term] = p["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {"labelSelector": {"matchLabels": {"kwasi.dev/wasminference": "a"}},
                    "topologyKey": "kubernetes.io/hostname"}
    theirs = Spec.parse({**BASE, "models": [url_model], "modelCache": {"claimName": "shared"}})
    assert [c["kind"] for c in render("a", "n", theirs)] == ["Deployment", "Service"]
    assert "affinity" not in pod({**BASE, "models": [url_model], "modelCache": {"claimName": "shared"}})
