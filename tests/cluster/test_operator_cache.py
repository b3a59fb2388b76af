"""spec.modelCache on the real control plane: the claim the replicas share, bound by the controller-manager
to a PersistentVolume, and its location and size in status. (That a file is then downloaded once is shown by
running the rendered init containers for real: tests/operator/test_model_cache.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from kwasi_operator_dev.local import OperatorProcess
from kwasi_testing.kube_objects import (
    SHA,
    Obj,
    get,
    namespace_fixture,
    operator_fixture,
    wait_for,
    wait_ready,
    wasminference,
)

if TYPE_CHECKING:
    from kwasi_testing.cluster import Cluster

URL_MODEL = [{"name": "default", "encoding": "ggml", "source": {"url": "https://models.invalid/m.gguf", "sha256": SHA}}]


operator = operator_fixture("cache", "--resync-seconds", "600")
ns = namespace_fixture("cache")


@pytest.fixture
def volumes(cluster: Cluster) -> Iterator[list[str]]:
    """PersistentVolumes the test makes (cluster-scoped), deleted afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        cluster.kubectl("delete", "pv", name, "--wait=false", check=False)


def volume(cluster: Cluster, made: list[str], ns: str, claim: str, size: str, mode: str, **source: Any) -> None:
    """A PersistentVolume reserved for ``ns/claim`` (claimRef), so no other claim takes it."""
    name = f"{ns}-{claim}"
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
                   "spec": {"capacity": {"storage": size}, "accessModes": [mode], "storageClassName": "",
                            "persistentVolumeReclaimPolicy": "Delete",
                            "claimRef": {"namespace": ns, "name": claim}, **source}})
    made.append(name)


def pods(cluster: Cluster, ns: str, name: str) -> list[Obj]:
    return list((get(cluster, ns, "pods", "-l", f"kwasi.dev/wasminference={name}") or {}).get("items", []))


def claims_of(pod: Obj) -> set[str]:
    return {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}


def test_replicas_share_one_cache_claim_on_its_node(cluster: Cluster, operator: OperatorProcess, ns: str,
                                                    volumes: list[str]) -> None:
    # A node-local volume on kwok-cpu: ReadWriteOnce, so the replicas must be where it is.
    node_affinity = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["kwok-cpu"]}]}]}}
    volume(cluster, volumes, ns, "cache-model-cache", "30Gi", "ReadWriteOnce",
           local={"path": "/var/cache/kwasi-models"}, nodeAffinity=node_affinity)
    tolerate_gpus = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    cluster.apply(wasminference("cache", replicas=2, models=URL_MODEL, scheduling={"tolerations": tolerate_gpus},
                                modelCache={"size": "20Gi", "accessMode": "ReadWriteOnce"}), namespace=ns)
    wi = wait_ready(cluster, ns, "cache")
    claim: Obj = get(cluster, ns, "pvc", "cache-model-cache") or {}
    assert claim["status"]["phase"] == "Bound" and claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["metadata"]["ownerReferences"][0]["name"] == "cache"
    replicas = pods(cluster, ns, "cache")
    assert len(replicas) == 2
    assert {p["spec"]["nodeName"] for p in replicas} == {"kwok-cpu"}
    assert all(claims_of(p) == {"cache-model-cache"} for p in replicas)
    init = replicas[0]["spec"]["initContainers"][-1]
    assert init["command"][0] == "flock" and init["args"][-1] == f"/model-cache/{SHA}/m.gguf"
    wi = wait_for(cluster, ns, "wasminference", "cache", lambda w: "size" in w["status"].get("modelCache", {}),
                  15, "status.modelCache with the bound size")
    assert wi["status"]["modelCache"] == {"claimName": "cache-model-cache", "path": "/model-cache",
                                          "phase": "Bound", "size": "30Gi"}


def test_an_existing_claim_shared_across_nodes(cluster: Cluster, operator: OperatorProcess, ns: str,
                                               volumes: list[str]) -> None:
    volume(cluster, volumes, ns, "shared", "50Gi", "ReadWriteMany", hostPath={"path": "/var/cache/kwasi-shared"})
    cluster.apply(wasminference("theirs", replicas=2, models=URL_MODEL, modelCache={"claimName": "shared"}),
                  namespace=ns)
    wi = wait_for(cluster, ns, "wasminference", "theirs",
                  lambda w: (w.get("status") or {}).get("phase") == "Failed", 30, "Failed without the claim")
    assert "spec.modelCache: PersistentVolumeClaim" in json.dumps(wi["status"]["conditions"])
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "shared"},
                   "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                            "resources": {"requests": {"storage": "50Gi"}}}}, namespace=ns)
    wait_for(cluster, ns, "pvc", "shared", lambda c: c["status"].get("phase") == "Bound", 30, "claim bound")
    wi = wait_ready(cluster, ns, "theirs")
    assert wi["status"]["modelCache"] == {"claimName": "shared", "path": "/model-cache", "phase": "Bound",
                                          "size": "50Gi"}
    assert get(cluster, ns, "pvc", "theirs-model-cache") is None  # the user's claim, no claim of its own
    assert all(claims_of(p) == {"shared"} for p in pods(cluster, ns, "theirs"))


def test_a_claim_of_the_same_name_that_is_not_ours_is_never_pruned(cluster: Cluster, operator: OperatorProcess,
                                                                    ns: str) -> None:
    # The operator's cache claim would be "keep-model-cache"; this one is the user's (no owner reference).
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "keep-model-cache"},
                   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
                  namespace=ns)
    uid = (get(cluster, ns, "pvc", "keep-model-cache") or {})["metadata"]["uid"]
    cluster.apply(wasminference("keep"), namespace=ns)
    wait_ready(cluster, ns, "keep")
    operator.restart()  # first sight after a restart: everything optional not asked for is pruned...
    cluster.wait_until(lambda: 'trigger="resume"' in operator.metrics(), 30, "resume after restart")
    cluster.wait_until(lambda: 'kwasi_operator_reconciles_total{result="ok",trigger="resume"}' in operator.metrics(),
                       30, "resume reconciled")
    assert (get(cluster, ns, "pvc", "keep-model-cache") or {})["metadata"]["uid"] == uid  # ...but only its own
