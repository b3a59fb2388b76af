"""The user's journey for real, in order: the Helm-installed operator runs as a pod on the real node; the CPU
sample (operator/deploy/samples/smollm2-cpu.yaml, unchanged) becomes a runtime pod serving SmolLM2 with the
bundled chat guest; the official `openai` client gets an answer naming Paris, and Prometheus, which found the
pod through the API server, counts exactly the tokens the client was told about; a killed pod is replaced, a
spec change rolls the pod, a GPU WasmInference lands on a kwok GPU node (or reports InsufficientGPU), and
deleting the CR removes everything it made.

`make cluster-demo` runs this module with `-s`: what it prints is the demo."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from kwasi_testing.cluster import wait_until
from kwasi_testing.journey import (
    CPU_SAMPLE,
    NAME,
    QUESTION,
    SAMPLES,
    ask,
    http_get,
    pod_ready,
    pods,
    prom_query,
    say,
    timestamp,
    wait_serving,
)
from kwasi_testing.kube_objects import children, cond, get

if TYPE_CHECKING:
    from kwasi_testing.cluster import Journey

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def served(journey: Journey) -> Obj:
    """The CPU sample, applied as it is, serving (its first Ready pod)."""
    c = journey.cluster
    t0 = time.monotonic()
    c.kubectl("-n", journey.apps, "apply", "-f", str(CPU_SAMPLE))
    pod, probe = wait_serving(c, journey.apps, NAME)
    say(f"{NAME} Ready in {time.monotonic() - t0:.1f}s on {pod['spec']['nodeName']} at {pod['status']['podIP']}",
        c.kubectl("-n", journey.apps, "get", "wasminference", "-o", "wide").stdout)
    # Real readiness: the runtime's /readyz said 503 "not ready" while it loaded the model, then 200 for good, and
    # the WasmInference turned Ready only after that (its lastTransitionTime has whole seconds).
    not_ready = [t for t, status, body in probe.answers if status == 503 and "not ready" in body]
    loaded = [t for t, status, _ in probe.answers if status == 200]
    assert not_ready and loaded and max(not_ready) < min(loaded), probe.answers
    wi = get(c, journey.apps, "wasminference", NAME)
    assert timestamp(cond(wi, "Ready")["lastTransitionTime"]) + 1 > min(loaded), (wi, probe.answers[-3:])
    # The API server reaches the real node's kubelet: the runtime's own log through `kubectl logs`.
    assert "listening on" in c.kubectl("-n", journey.apps, "logs", pod["metadata"]["name"]).stdout
    return pod


def test_the_real_node_is_ready_beside_the_kwok_nodes(journey: Journey) -> None:
    c = journey.cluster
    assert c.real_node is not None
    node = c.get_json("node", c.real_node)
    info = node["status"]["nodeInfo"]
    assert (info["kubeletVersion"], info["containerRuntimeVersion"].split("+")[0]) == ("v1.36.3", "containerd://2.4.2")
    assert pod_ready(node)  # the same shape of condition list
    assert {"key": "kwasi.dev/real-node", "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
    assert node["metadata"]["labels"]["kwasi.dev/real-node"] == "true"
    assert [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"] == [c.node_ip]
    kwok = [n for n in c.get_json("nodes")["items"] if n["metadata"]["name"].startswith("kwok-")]
    assert kwok and all(pod_ready(n) for n in kwok)


def test_the_operator_runs_as_a_pod_on_the_real_node(journey: Journey) -> None:
    c = journey.cluster
    [pod] = c.get_json("-n", journey.system, "pods", "-l", f"app.kubernetes.io/instance={journey.release}")["items"]
    spec = pod["spec"]
    assert spec["nodeName"] == c.real_node
    assert spec["serviceAccountName"] != "default" and spec["securityContext"]["runAsNonRoot"] is True
    [container] = spec["containers"]
    assert container["image"] == "localhost/kwasi-operator:dev"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_ready(pod) and pod["status"]["containerStatuses"][0]["restartCount"] == 0, pod["status"]
    sa = f"system:serviceaccount:{journey.system}:{spec['serviceAccountName']}"
    can = c.kubectl("auth", "can-i", "create", "deployments.apps", "-n", journey.apps, "--as", sa, check=False)
    cannot = c.kubectl("auth", "can-i", "create", "deployments.apps", "-n", "default", "--as", sa, check=False)
    assert (can.stdout.strip(), cannot.stdout.strip()) == ("yes", "no")


def test_chat_names_paris_and_prometheus_counts_its_tokens(journey: Journey, served: Obj) -> None:
    c = journey.cluster
    answer, tokens = ask(served)
    say(f"openai client -> {served['metadata']['name']}: {QUESTION}", f"{answer}\n({tokens} completion tokens)")
    assert "Paris" in answer
    pod = served["metadata"]["name"]
    query = f'sum(kwasi_generation_tokens_total{{namespace="{journey.apps}",pod="{pod}"}})'

    def counted() -> list[Obj] | None:
        result = prom_query(c, query)
        return result if result and float(result[0]["value"][1]) == tokens else None

    result = wait_until(counted, 60, f"Prometheus: {query} == {tokens}", interval=1)
    say(f"Prometheus ({c.prometheus_url}): {query}", json.dumps(result))
    [target] = [t for t in prom_query(c, f'up{{namespace="{journey.apps}",pod="{pod}"}}')]
    assert target["metric"]["job"] == f"{journey.apps}/{NAME}" and target["value"][1] == "1"


def test_a_killed_pod_is_replaced_and_serves_again(journey: Journey, served: Obj) -> None:
    c = journey.cluster
    [old] = pods(c, journey.apps, NAME)
    c.kubectl("-n", journey.apps, "delete", "pod", old["metadata"]["name"], "--wait=false")
    new, _ = wait_serving(c, journey.apps, NAME, not_uid=old["metadata"]["uid"])
    assert new["metadata"]["name"] != old["metadata"]["name"]
    assert "Paris" in ask(new)[0]


def test_a_spec_change_rolls_the_pod(journey: Journey, served: Obj) -> None:
    c = journey.cluster
    [old] = pods(c, journey.apps, NAME)
    c.kubectl("-n", journey.apps, "patch", "wasminference", NAME, "--type=merge",
              "-p", json.dumps({"spec": {"server": {"maxConcurrency": 3}}}))
    new, _ = wait_serving(c, journey.apps, NAME, not_uid=old["metadata"]["uid"])
    args = new["spec"]["containers"][0]["args"]
    assert args[args.index("--max-concurrency") + 1] == "3"
    wi = get(c, journey.apps, "wasminference", NAME) or {}
    assert wi["status"]["observedGeneration"] == wi["metadata"]["generation"]
    assert "Paris" in ask(new)[0]


def test_gpu_inferences_land_on_kwok_gpu_nodes_or_report_insufficient_gpu(journey: Journey) -> None:
    c = journey.cluster
    for sample in ("smollm2-gpu.yaml", "too-many-gpus.yaml"):
        c.kubectl("-n", journey.apps, "apply", "-f", str(SAMPLES / sample))

    def settled() -> tuple[Obj, Obj] | None:
        gpu, big = (get(c, journey.apps, "wasminference", n) for n in ("smollm2-gpu", "too-many-gpus"))
        ok = cond(gpu, "Ready").get("status") == "True" and cond(big, "Scheduled").get("reason") == "InsufficientGPU"
        return (gpu or {}, big or {}) if ok else None

    gpu, big = wait_until(settled, 90, "GPU WasmInferences scheduled / reported")
    assert "kwok-gpu-a100" in cond(gpu, "Scheduled")["message"]
    assert "Insufficient nvidia.com/gpu" in cond(big, "Scheduled")["message"]
    say("kubectl get wasminference", c.kubectl("-n", journey.apps, "get", "wasminference", "-o", "wide").stdout)
    for name in ("smollm2-gpu", "too-many-gpus"):
        c.kubectl("-n", journey.apps, "delete", "wasminference", name)


def test_deleting_the_cr_removes_everything_it_made(journey: Journey, served: Obj) -> None:
    c = journey.cluster
    [pod] = pods(c, journey.apps, NAME)
    ip = pod["status"]["podIP"]
    c.kubectl("-n", journey.apps, "delete", "wasminference", NAME)
    wait_until(lambda: not children(c, journey.apps, NAME) or None, 120, f"every child of {NAME} gone")
    assert (get(c, journey.apps, "replicasets", "-l", f"kwasi.dev/wasminference={NAME}") or {}).get("items") == []
    assert http_get(f"http://{ip}:8080/healthz", timeout=2)[0] == 0  # the container is gone too
