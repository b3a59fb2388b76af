"""The pods the operator asks for, as the API server, scheduler and controller-manager take them: rollouts
on a full GPU node, termination grace and probes, and the pod escape hatches."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from kwasi_operator_dev.local import OperatorProcess
from kwasi_testing.kube_objects import (
    Obj,
    cond,
    get,
    namespace_fixture,
    operator_fixture,
    wait_for,
    wait_ready,
    wasminference,
)

if TYPE_CHECKING:
    from kwasi_testing.cluster import Cluster

A100 = "NVIDIA-A100-SXM4-40GB"  # the kwok A100 node: 4 GPUs
H100 = "NVIDIA-H100-80GB-HBM3"


operator = operator_fixture("pods", "--resync-seconds", "60")
ns = namespace_fixture("pods")


def pods(cluster: Cluster, ns: str, name: str) -> list[Obj]:
    return list((get(cluster, ns, "pods", "-l", f"kwasi.dev/wasminference={name}") or {}).get("items", []))


def rolled_out(generation: int) -> Callable[[Obj], bool]:
    def check(wi: Obj) -> bool:
        st = wi.get("status") or {}
        return bool(st.get("observedGeneration") == generation and cond(wi, "Ready").get("status") == "True")
    return check


def test_rollout_on_a_full_gpu_node_needs_no_spare_gpu(cluster: Cluster, operator: OperatorProcess,
                                                       ns: str) -> None:
    # One replica holds all 4 GPUs of the only A100 node; a new spec must still roll out.
    cluster.apply(wasminference("full", gpu={"count": 4, "product": A100}), namespace=ns)
    wait_ready(cluster, ns, "full")
    dep: Obj = get(cluster, ns, "deployment", "full") or {}
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    [old] = pods(cluster, ns, "full")
    cluster.kubectl("-n", ns, "patch", "wasminference", "full", "--type=merge", "-p",
                    json.dumps({"spec": {"runtime": {"args": ["--max-body-bytes", "1048576"]}}}))
    generation = (get(cluster, ns, "wasminference", "full") or {})["metadata"]["generation"]
    wait_for(cluster, ns, "wasminference", "full", rolled_out(generation), 90, "rolled out on the full node")
    [new] = pods(cluster, ns, "full")
    assert new["metadata"]["uid"] != old["metadata"]["uid"] and new["spec"]["nodeName"] == "kwok-gpu-a100"
    assert "1048576" in new["spec"]["containers"][0]["args"]

    # What the default avoids: a surge pod waits for a GPU the old pod holds, and status says why.
    cluster.kubectl("-n", ns, "patch", "wasminference", "full", "--type=merge", "-p",
                    json.dumps({"spec": {"rollout": {"maxSurge": 1, "maxUnavailable": 0},
                                         "runtime": {"args": ["--max-body-bytes", "2097152"]}}}))
    wi = wait_for(cluster, ns, "wasminference", "full", lambda w: cond(w, "Scheduled").get("status") == "False",
                  60, "the surge pod unschedulable")
    assert (cond(wi, "Degraded")["status"], cond(wi, "Degraded")["reason"]) == ("True", "InsufficientGPU")
    assert cond(wi, "Ready")["status"] == "True"  # the old pod still serves


def test_grace_probes_and_escape_hatches_reach_the_pods(cluster: Cluster, operator: OperatorProcess,
                                                        ns: str) -> None:
    cluster.kubectl("create", "priorityclass", f"inference-{ns}", "--value=1000", check=False)
    cluster.kubectl("-n", ns, "create", "configmap", "ca", "--from-literal=ca.crt=not-really-a-cert")
    spread = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
               "labelSelector": {"matchLabels": {"kwasi.dev/wasminference": "hatch"}}}]
    spec = {
        "replicas": 2,
        "gpu": {"count": 1, "products": [H100, "NVIDIA-B200"]},
        "server": {"drainSeconds": 90, "startupSeconds": 1200},
        "volumes": [{"name": "ca", "configMap": {"name": "ca"}}, {"name": "shm", "emptyDir": {"medium": "Memory"}}],
        "volumeMounts": [{"name": "ca", "mountPath": "/etc/kwasi/ca", "readOnly": True},
                         {"name": "shm", "mountPath": "/dev/shm"}],
        "runtime": {"env": [{"name": "KWASI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "api", "key": "key"}}}],
                    "envFrom": [{"secretRef": {"name": "runtime-extra", "optional": True}}]},
        "scheduling": {"topologySpreadConstraints": spread, "priorityClassName": f"inference-{ns}"},
    }
    try:
        cluster.apply(wasminference("hatch", **spec), namespace=ns)
        wait_ready(cluster, ns, "hatch")
        for pod in pods(cluster, ns, "hatch"):
            p = pod["spec"]
            c = p["containers"][0]
            assert p["nodeName"] == "kwok-gpu-h100"  # gpu.products: the only listed product here
            assert p["terminationGracePeriodSeconds"] == 5 + 90 + 10
            assert c["args"][c["args"].index("--grace-period") + 1] == "90"
            assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
            assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
            assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] == 1200
            assert p["priorityClassName"] == f"inference-{ns}" and p["priority"] == 1000  # admission resolved it
            assert p["topologySpreadConstraints"] == spread
            assert {"name": "ca", "mountPath": "/etc/kwasi/ca", "readOnly": True} in c["volumeMounts"]
            assert {"name": "shm", "emptyDir": {"medium": "Memory"}} in p["volumes"]
            assert {"name": "KWASI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "api", "key": "key"}}} in c["env"]
            assert c["envFrom"] == [{"secretRef": {"name": "runtime-extra", "optional": True}}]
        dep: Obj = get(cluster, ns, "deployment", "hatch") or {}
        assert dep["spec"]["progressDeadlineSeconds"] >= 1200
    finally:
        cluster.kubectl("delete", "priorityclass", f"inference-{ns}", check=False)
