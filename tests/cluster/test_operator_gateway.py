"""spec.inferencePool on the real API server, validated by the Gateway API inference extension's own
InferencePool CRD (from its Go module, hack/cluster/extra-crds.sh)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from kwasi_operator_dev.local import OperatorProcess
from kwasi_testing.kube_objects import (
    Obj,
    extra_crd,
    get,
    namespace_fixture,
    operator_fixture,
    wait_for,
    wait_ready,
    wasminference,
)

if TYPE_CHECKING:
    from kwasi_testing.cluster import Cluster

POOL = "inferencepools.inference.networking.k8s.io"


operator = operator_fixture("gateway", "--resync-seconds", "600")
ns = namespace_fixture("gw")


def test_inference_pool_rendered_once_its_crd_exists(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    models = [{"name": name, "encoding": "ggml", "source": {"url": f"https://models.invalid/{name}.gguf",
                                                            "sha256": "a" * 64}} for name in ("small", "chat")]
    pool = {"endpointPicker": {"name": "chat-epp", "port": 9002, "failureMode": "FailOpen"}, "model": "chat"}
    cluster.apply(wasminference("chat", models=models, inferencePool=pool, server={"port": 8000}), namespace=ns)
    wait_ready(cluster, ns, "chat")  # without the CRD: served as usual, no pool
    assert cluster.kubectl("get", "crd", POOL, check=False).returncode != 0

    with extra_crd(cluster, "inference-pool"):
        found: Obj = wait_for(cluster, ns, POOL, "chat", lambda _: True, 15, "InferencePool applied")
        assert found["spec"]["selector"] == {"matchLabels": {"kwasi.dev/wasminference": "chat"}}
        assert found["spec"]["targetPorts"] == [{"number": 8000}]
        assert found["spec"]["endpointPickerRef"] == {"name": "chat-epp", "port": {"number": 9002},
                                                       "failureMode": "FailOpen", "kind": "Service", "group": ""}
        assert found["metadata"]["ownerReferences"][0]["kind"] == "WasmInference"
        flags = found["metadata"]["annotations"]["kwasi.dev/endpoint-picker-flags"].split()
        assert '--total-queued-requests-metric=kwasi_requests_waiting{model="chat",module="openai_chat"}' in flags
        assert '--kv-cache-usage-percentage-metric=kwasi_kv_cache_usage_ratio{model="chat"}' in flags
        # The pool selects exactly the operator's pods.
        selector = ",".join(f"{k}={v}" for k, v in found["spec"]["selector"]["matchLabels"].items())
        assert len((get(cluster, ns, "pods", "-l", selector) or {})["items"]) == 1

        cluster.kubectl("-n", ns, "patch", POOL, "chat", "--type=merge", "-p",
                        json.dumps({"spec": {"targetPorts": [{"number": 9999}]}}))
        wait_for(cluster, ns, POOL, "chat", lambda p: p["spec"]["targetPorts"] == [{"number": 8000}], 5,
                 "InferencePool repaired")

        cluster.kubectl("-n", ns, "patch", "wasminference", "chat", "--type=json", "-p",
                        json.dumps([{"op": "remove", "path": "/spec/inferencePool"}]))
        cluster.wait_until(lambda: get(cluster, ns, POOL, "chat") is None, 15, "InferencePool pruned")
