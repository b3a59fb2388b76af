"""Smoke tests of the local control plane: kwok GPU nodes, GPU scheduling, RBAC."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the fixture's type; not imported at run time (conftest is not a package module)
    from kwasi_testing.cluster import Cluster

GPU = "nvidia.com/gpu"
EXPECTED_GPUS = {"kwok-gpu-a100": "4", "kwok-gpu-h100": "8", "kwok-cpu": None}
MIG_NODES = {"kwok-gpu-a100-mig": ("nvidia.com/mig-1g.10gb", "7")}  # MIG slices, no whole GPUs


def _ready(node: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", []))


def _settled_nodes(cluster: Cluster) -> dict[str, dict[str, Any]] | None:
    """The nodes once the node lifecycle controller has lifted its transient `node.kubernetes.io/*` taints
    (a loaded machine may show `not-ready` for a moment after the kwok nodes turn Ready)."""
    # The kwok nodes; the real node (kubelet) is checked in test_journey.py.
    nodes = {n["metadata"]["name"]: n for n in cluster.get_json("nodes")["items"]
             if (n["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/node") == "fake"}
    transient = [t for n in nodes.values() for t in n["spec"].get("taints", [])
                 if t["key"].startswith("node.kubernetes.io/")]
    return None if transient else nodes


def test_nodes_ready_with_gpus_and_rbac_on(cluster: Cluster) -> None:
    nodes = cluster.wait_until(lambda: _settled_nodes(cluster), 60, "nodes without node-lifecycle taints")
    assert set(nodes) == set(EXPECTED_GPUS) | set(MIG_NODES)
    for name, (resource, slices) in MIG_NODES.items():
        assert nodes[name]["status"]["allocatable"].get(resource) == slices and GPU not in nodes[name]["status"][
            "allocatable"]
        assert (GPU, "NoSchedule") in {(t["key"], t["effect"]) for t in nodes[name]["spec"]["taints"]}
    for name, gpus in EXPECTED_GPUS.items():
        node = nodes[name]
        assert _ready(node), f"{name} not Ready: {node['status'].get('conditions')}"
        assert node["status"]["allocatable"].get(GPU) == gpus
        assert node["status"]["capacity"].get(GPU) == gpus
        taints = {(t["key"], t["effect"]) for t in node["spec"].get("taints", [])}
        labels = node["metadata"]["labels"]
        if gpus:
            assert (GPU, "NoSchedule") in taints
            assert labels["nvidia.com/gpu.count"] == gpus
            assert int(labels["nvidia.com/gpu.memory"]) > 0
        else:
            assert not taints
            assert "nvidia.com/gpu.product" not in labels
    products = {nodes[n]["metadata"]["labels"]["nvidia.com/gpu.product"] for n in EXPECTED_GPUS if n != "kwok-cpu"}
    assert len(products) == 2

    # RBAC is enforced: an ordinary ServiceAccount may not create pods; the admin may.
    sa = "system:serviceaccount:default:default"
    denied = cluster.kubectl("auth", "can-i", "create", "pods", "-n", "default", "--as", sa, check=False)
    assert denied.stdout.strip() == "no", denied.stdout + denied.stderr
    assert cluster.kubectl("auth", "can-i", "create", "pods").stdout.strip() == "yes"
    v = cluster.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.36.3"' in v


def _pod(name: str, gpus: int | None, tolerate: bool) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "registry.invalid/kwasi/smoke:0",
    }
    if gpus is not None:
        container["resources"] = {"limits": {GPU: str(gpus)}}
    spec: dict[str, Any] = {"containers": [container]}
    if tolerate:
        spec["tolerations"] = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_gpu_pod_runs_and_oversized_pod_stays_pending(cluster: Cluster) -> None:
    ns = cluster.create_namespace(f"smoke-{uuid.uuid4().hex[:6]}")
    try:
        cluster.apply(_pod("gpu-2", 2, tolerate=True), namespace=ns)
        cluster.apply(_pod("gpu-16", 16, tolerate=True), namespace=ns)
        cluster.apply(_pod("cpu", None, tolerate=False), namespace=ns)

        def running(name: str) -> dict[str, Any] | None:
            pod: dict[str, Any] = cluster.get_json("-n", ns, "pod", name)
            return pod if pod["status"].get("phase") == "Running" else None

        gpu_pod = cluster.wait_until(lambda: running("gpu-2"), 60, "pod gpu-2 Running")
        assert gpu_pod["spec"]["nodeName"] in ("kwok-gpu-a100", "kwok-gpu-h100")
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in gpu_pod["status"]["conditions"])
        cpu_pod = cluster.wait_until(lambda: running("cpu"), 60, "pod cpu Running")
        assert cpu_pod["spec"]["nodeName"] == "kwok-cpu"  # GPU nodes are tainted

        def unschedulable() -> dict[str, Any] | None:
            pod: dict[str, Any] = cluster.get_json("-n", ns, "pod", "gpu-16")
            for c in pod["status"].get("conditions", []):
                if c["type"] == "PodScheduled" and c["status"] == "False":
                    return pod
            return None

        big = cluster.wait_until(unschedulable, 60, "pod gpu-16 PodScheduled=False")
        cond = next(c for c in big["status"]["conditions"] if c["type"] == "PodScheduled")
        assert big["status"]["phase"] == "Pending"
        assert not big["spec"].get("nodeName")
        assert cond["reason"] == "Unschedulable"
        assert f"Insufficient {GPU}" in cond["message"], cond["message"]
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
