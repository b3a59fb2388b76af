"""spec.modelServer: the models in a GPU model-server Deployment behind NNRPC with TLS, the guests in a CPU-only
Deployment (rendering and status; tests/cluster/test_model_server.py runs it on a real control plane)."""

from __future__ import annotations

from typing import Any

from kwasi_operator.render import render
from kwasi_operator.spec import Spec
from kwasi_operator.status import DeploymentInfo, Desired, PodInfo, ServerDesired, build

BASE: dict[str, Any] = {
    "module": {"image": "registry.example/app:1", "delivery": "ImageVolume", "path": "app.wasm"},
    "models": [{"name": "default", "encoding": "ggml", "target": "gpu",
                "source": {"pvc": {"claimName": "models", "subPath": "smollm2.gguf"}},
                "config": {"ctx-size": 2048}}],
    "gpu": {"count": 1, "product": "NVIDIA-H100"},
    "replicas": 3,
    "resources": {"requests": {"cpu": "500m"}},
    "modelServer": {"replicas": 2, "tls": {"secretName": "app-tls"}, "resources": {"limits": {"memory": "8Gi"}}},
}


def children(spec: dict[str, Any], available: tuple[str, ...] = ()) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in render("app", "ns", Spec.parse(spec), available)}


def pod_of(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_guests_are_cpu_only_and_reach_the_models_over_tls() -> None:
    guest = children(BASE)[("Deployment", "app")]
    pod = pod_of(guest)
    c = pod["containers"][0]
    args = c["args"]
    assert args[:2] == ["serve", "--module"] and "--nn-preload" not in args and "--nn-config" not in args
    assert args[args.index("--nn-rpc-uri") + 1] == "app-model-server.ns.svc:50051"
    assert args[args.index("--nn-rpc-tls-ca") + 1] == "/tls/ca.crt"
    assert c["resources"] == {"requests": {"cpu": "500m"}}  # no GPU on this side
    assert "tolerations" not in pod and "nodeSelector" not in pod and "initContainers" not in pod
    tls = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == "app-tls" and tls["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert not any(v["name"].startswith("model-") for v in pod["volumes"])
    assert guest["spec"]["replicas"] == 3


def test_the_model_server_holds_the_gpu_the_models_and_the_key() -> None:
    kids = children(BASE)
    server = kids[("Deployment", "app-model-server")]
    pod = pod_of(server)
    c = pod["containers"][0]
    args = c["args"]
    assert args[:3] == ["nn-rpc-server", "--nn-rpc-uri", "0.0.0.0:50051"]
    assert args[args.index("--tls-cert") + 1] == "/tls/tls.crt" and args[args.index("--tls-key") + 1] == "/tls/tls.key"
    assert args[args.index("--nn-preload") + 1] == "default:ggml:gpu:/models/default/smollm2.gguf"
    assert args[args.index("--nn-config") + 1] == 'default={"ctx-size": 2048}'
    assert args[args.index("--metrics-address") + 1] == "0.0.0.0:9090"
    assert c["resources"]["limits"] == {"memory": "8Gi", "nvidia.com/gpu": 1}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100"}
    tls = next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]
    assert [i["key"] for i in tls["items"]] == ["tls.crt", "tls.key"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert not any(v["name"] == "module" for v in pod["volumes"])  # the model server runs no guest
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
    assert server["spec"]["replicas"] == 2
    # Disjoint selectors: the guests' Deployment and Service never select a model-server pod.
    guest_selector = kids[("Deployment", "app")]["spec"]["selector"]["matchLabels"]
    server_pod_labels = server["spec"]["template"]["metadata"]["labels"]
    assert not guest_selector.items() <= server_pod_labels.items()
    assert kids[("Service", "app")]["spec"]["selector"] == guest_selector


def test_service_network_policy_and_independent_scaling() -> None:
    kids = children(BASE)
    svc = kids[("Service", "app-model-server")]["spec"]
    assert svc["selector"] == {"kwasi.dev/model-server": "app"}
    assert [(p["name"], p["port"]) for p in svc["ports"]] == [("grpc", 50051), ("metrics", 9090)]
    policy = kids[("NetworkPolicy", "app-model-server")]["spec"]
    assert policy["ingress"][0] == {"from": [{"podSelector": {"matchLabels": {"kwasi.dev/wasminference": "app"}}}],
                                    "ports": [{"port": "grpc", "protocol": "TCP"}]}
    assert ("PodDisruptionBudget", "app") in kids and ("PodDisruptionBudget", "app-model-server") in kids

    auto = {**BASE, "modelServer": {"autoscaling": {"maxReplicas": 4, "metric": "sessions", "target": 8},
                                    "tls": {"secretName": "app-tls"}}}
    kids = children(auto)
    hpa = kids[("HorizontalPodAutoscaler", "app-model-server")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "app-model-server" and hpa["minReplicas"] == 1
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "kwasi_nnrpc_sessions"
    assert "replicas" not in kids[("Deployment", "app-model-server")]["spec"]  # the HPA owns the count
    assert kids[("Deployment", "app")]["spec"]["replicas"] == 3  # the guests' own
    assert ("PodDisruptionBudget", "app-model-server") not in kids and ("HorizontalPodAutoscaler", "app") not in kids


def test_cert_manager_issues_the_secret_both_sides_mount() -> None:
    spec = {**BASE, "modelServer": {"tls": {"issuerRef": {"name": "cluster-ca", "kind": "ClusterIssuer"}}}}
    assert ("Certificate", "app-model-server") not in children(spec)  # cert-manager is not installed
    kids = children(spec, available=("Certificate",))
    cert = kids[("Certificate", "app-model-server")]["spec"]
    assert cert["secretName"] == "app-model-server-tls"
    assert "app-model-server.ns.svc" in cert["dnsNames"]
    assert cert["issuerRef"] == {"name": "cluster-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    for dep in ("app", "app-model-server"):
        tls = next(v for v in pod_of(kids[("Deployment", dep)])["volumes"] if v["name"] == "tls")
        assert tls["secret"]["secretName"] == "app-model-server-tls"


def test_without_model_server_nothing_changes() -> None:
    spec = {k: v for k, v in BASE.items() if k != "modelServer"}
    kids = children(spec)
    assert {k for k in kids if "model-server" in k[1]} == set()
    args = pod_of(kids[("Deployment", "app")])["containers"][0]["args"]
    assert "--nn-preload" in args and "--nn-rpc-uri" not in args


DESIRED = Desired(generation=2, replicas=3, selector="kwasi.dev/wasminference=app", endpoint="app.ns.svc:8080",
                  gpu_resource="nvidia.com/gpu",
                  model_server=ServerDesired(replicas=2, selector="kwasi.dev/model-server=app",
                                             endpoint="app-model-server.ns.svc:50051"))


def dep(replicas: int, ready: int, server: bool = False) -> DeploymentInfo:
    return DeploymentInfo(generation=1, observed_generation=1, replicas=replicas, ready_replicas=ready,
                          updated_replicas=replicas, available_replicas=ready, conditions={}, model_server=server)


def cond(status: dict[str, Any], type_: str) -> tuple[str, str]:
    c = next(c for c in status["conditions"] if c["type"] == type_)
    return c["status"], c["reason"]


def test_status_reports_both_sides_and_is_ready_only_with_both() -> None:
    guests = [PodInfo(f"g{i}", "Running", "cpu", None) for i in range(3)]
    servers = [PodInfo(f"s{i}", "Running", "gpu", None, model_server=True) for i in range(2)]
    s = build(DESIRED, dep(3, 3), guests + servers, None, server_deployment=dep(2, 2, server=True))
    assert s["phase"] == "Ready" and s["readyReplicas"] == 3
    assert s["modelServer"] == {"replicas": 2, "readyReplicas": 2, "selector": "kwasi.dev/model-server=app",
                                "endpoint": "app-model-server.ns.svc:50051"}
    assert cond(s, "ModelServerReady") == ("True", "MinimumReplicasReady") and cond(s, "Ready")[0] == "True"

    s = build(DESIRED, dep(3, 3), guests + servers[:1], None, server_deployment=dep(2, 1, server=True))
    assert s["phase"] == "Progressing" and cond(s, "ModelServerReady") == ("False", "ReplicasNotReady")
    assert "1/2 model-server replicas ready" in next(c for c in s["conditions"] if c["type"] == "Ready")["message"]

    stuck = PodInfo("s1", "Pending", None, "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    model_server=True)
    s = build(DESIRED, dep(3, 3), [*guests, servers[0], stuck], None, server_deployment=dep(2, 1, server=True))
    assert cond(s, "Scheduled") == ("False", "InsufficientGPU") and s["phase"] == "Degraded"
    s = build(DESIRED, dep(3, 3), guests, None, server_deployment=None)
    assert s["modelServer"]["readyReplicas"] == 0 and cond(s, "Ready")[0] == "False"
