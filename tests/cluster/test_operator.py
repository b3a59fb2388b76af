"""End-to-end tests of kwasi-operator on the real local control plane (API server, scheduler,
controller-manager, kwok GPU nodes).

The operator runs as a subprocess of its console script with a kubeconfig holding only a token of
its own ServiceAccount (TokenRequest), so every test also proves that the ClusterRole in
operator/deploy/rbac.yaml is sufficient. A 2 s resync keeps drift-repair tests short. Only the tests
about GPU placement ask for GPUs (the kwok nodes have 4 + 8), so namespaces still being deleted by
earlier tests cannot starve later ones.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kwasi_operator_dev.local import (
    NAMESPACE,
    SERVICE_ACCOUNT,
    OperatorProcess,
)
from kwasi_testing.kube_objects import (
    SHA,
    children,
    cond,
    events,
    get,
    namespace_fixture,
    operator_fixture,
    reasons,
    wait_ready,
    wasminference,
)

if TYPE_CHECKING:
    from kwasi_testing.cluster import Cluster

SA_USER = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
A100 = "NVIDIA-A100-SXM4-40GB"
MONITOR_CRDS = ("servicemonitors", "podmonitors")
Obj = dict[str, Any]


# A 2 s resync and a short backoff keep the retry tests short.
operator = operator_fixture("kwasi-operator", "--resync-seconds", "2", "--backoff-seconds", "0.5")
ns = namespace_fixture("op")


def test_gpu_inference_scheduled_on_matching_node_and_ready(cluster: Cluster, operator: OperatorProcess,
                                                            ns: str) -> None:
    cluster.apply(wasminference("a100", gpu={"count": 2, "product": A100}), namespace=ns)
    cluster.apply(wasminference("big-mem", gpu={"count": 1, "memoryMiB": 80000}), namespace=ns)
    wi = wait_ready(cluster, ns, "a100")

    dep = get(cluster, ns, "deployment", "a100", "--show-managed-fields")
    assert dep is not None
    owner = dep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "WasmInference", "a100", wi["metadata"]["uid"], True)
    assert any(m["manager"] == "kwasi-operator" and m["operation"] == "Apply" for m in dep["metadata"]["managedFields"])
    pod_spec = dep["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec["tolerations"]
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": A100}
    args = pod_spec["containers"][0]["args"]
    assert args[args.index("--nn-preload") + 1] == "default:ggml:gpu:/models/default/smollm2.gguf"

    pods = get(cluster, ns, "pods", "-l", "kwasi.dev/wasminference=a100")
    assert pods is not None and len(pods["items"]) == 1
    assert pods["items"][0]["status"]["phase"] == "Running"
    assert pods["items"][0]["spec"]["nodeName"] == "kwok-gpu-a100"

    st = wi["status"]
    assert st["phase"] == "Ready" and st["readyReplicas"] == 1 and st["replicas"] == 1
    assert st["endpoint"] == f"a100.{ns}.svc.cluster.local:8080"
    assert st["selector"] == "kwasi.dev/wasminference=a100"
    assert st["observedGeneration"] == wi["metadata"]["generation"]
    assert cond(wi, "Scheduled")["status"] == "True" and "kwok-gpu-a100" in cond(wi, "Scheduled")["message"]
    svc = get(cluster, ns, "service", "a100")
    assert svc is not None and svc["spec"]["selector"] == {"kwasi.dev/wasminference": "a100"}
    assert svc["spec"]["ports"][0]["port"] == 8080

    # memoryMiB >= 80000 only fits the H100 node (81559 MiB), through node affinity.
    wait_ready(cluster, ns, "big-mem")
    pods = get(cluster, ns, "pods", "-l", "kwasi.dev/wasminference=big-mem")
    assert pods is not None and pods["items"][0]["spec"]["nodeName"] == "kwok-gpu-h100"

    printed = cluster.kubectl("-n", ns, "get", "wasminference", "a100").stdout
    assert "True" in printed and f"a100.{ns}.svc.cluster.local:8080" in printed
    cluster.wait_until(lambda: {"Created", "Ready"} <= set(reasons(cluster, ns, "a100")), 20, "Created+Ready events")


def test_kubectl_scale_changes_replicas_and_pdb(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    cluster.apply(wasminference("scaled"), namespace=ns)
    wait_ready(cluster, ns, "scaled")
    cluster.kubectl("-n", ns, "scale", "wasminference", "scaled", "--replicas=3")

    def three_ready() -> Obj | None:
        wi = get(cluster, ns, "wasminference", "scaled")
        st = (wi or {}).get("status", {})
        return wi if st.get("readyReplicas") == 3 and cond(wi, "Ready").get("status") == "True" else None

    wi = cluster.wait_until(three_ready, 60, "3 ready replicas")
    assert wi["spec"]["replicas"] == 3 and wi["status"]["replicas"] == 3
    dep = get(cluster, ns, "deployment", "scaled")
    assert dep is not None and dep["spec"]["replicas"] == 3
    scale = json.loads(cluster.kubectl("get", "--raw",
                                       f"/apis/kwasi.dev/v1alpha1/namespaces/{ns}/wasminferences/scaled/scale").stdout)
    assert scale["status"] == {"replicas": 3, "selector": "kwasi.dev/wasminference=scaled"}
    assert get(cluster, ns, "pdb", "scaled") is not None  # more than one replica: a PDB

    cluster.kubectl("-n", ns, "scale", "wasminference", "scaled", "--replicas=1")
    cluster.wait_until(lambda: get(cluster, ns, "pdb", "scaled") is None, 30, "PDB pruned at 1 replica")
    assert "Pruned" in reasons(cluster, ns, "scaled")


def test_sixteen_gpus_reported_insufficient(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    cluster.apply(wasminference("huge", gpu={"count": 16}), namespace=ns)

    def unschedulable() -> Obj | None:
        wi = get(cluster, ns, "wasminference", "huge")
        return wi if cond(wi, "Scheduled").get("status") == "False" else None

    wi = cluster.wait_until(unschedulable, 60, "Scheduled=False")
    sched = cond(wi, "Scheduled")
    assert sched["reason"] == "InsufficientGPU"
    assert "Insufficient nvidia.com/gpu" in sched["message"]  # the scheduler's own words
    assert wi["status"]["phase"] == "Pending"
    assert cond(wi, "Ready")["status"] == "False" and cond(wi, "Ready")["reason"] == "InsufficientGPU"
    # 0 of 1 placed is as degraded as 1 of 2 (below): it will not get better without someone acting.
    assert (cond(wi, "Degraded")["status"], cond(wi, "Degraded")["reason"]) == ("True", "InsufficientGPU")
    cluster.wait_until(lambda: "InsufficientGPU" in reasons(cluster, ns, "huge"), 20, "InsufficientGPU event")


def test_one_of_two_replicas_placed_is_degraded(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    # Each replica wants all 8 GPUs of the H100 node (the only one with >= 80000 MiB): one fits, one waits.
    cluster.apply(wasminference("half", replicas=2, gpu={"count": 8, "memoryMiB": 80000}), namespace=ns)

    def one_ready_one_stuck() -> Obj | None:
        wi = get(cluster, ns, "wasminference", "half")
        st = (wi or {}).get("status") or {}
        return wi if st.get("readyReplicas") == 1 and cond(wi, "Scheduled").get("status") == "False" else None

    wi = cluster.wait_until(one_ready_one_stuck, 60, "1 of 2 replicas ready, 1 unschedulable")
    assert wi["status"]["phase"] == "Degraded"
    assert (cond(wi, "Degraded")["status"], cond(wi, "Degraded")["reason"]) == ("True", "InsufficientGPU")
    assert cond(wi, "Ready")["status"] == "False" and "1/2 replicas ready" in cond(wi, "Ready")["message"]


def test_mig_slice_schedules_on_a_tainted_mig_node(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    # MIG nodes carry the nvidia.com/gpu taint, not one named after the slice resource.
    cluster.apply(wasminference("slice", gpu={"resourceName": "nvidia.com/mig-1g.10gb"}), namespace=ns)
    wi = wait_ready(cluster, ns, "slice")
    [pod] = (get(cluster, ns, "pods", "-l", "kwasi.dev/wasminference=slice") or {})["items"]
    assert pod["spec"]["nodeName"] == "kwok-gpu-a100-mig"
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": "1"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    assert "kwok-gpu-a100-mig" in cond(wi, "Scheduled")["message"]


@pytest.mark.parametrize(("spec", "message"), [
    ({"replicas": 2, "autoscaling": {"maxReplicas": 3}},
     "spec.replicas and spec.autoscaling are mutually exclusive"),
    ({"models": [{"name": "m", "encoding": "ggml", "source": {"url": "https://h/m", "sha256": SHA}},
                 {"name": "m", "encoding": "ggml", "source": {"url": "https://h/n", "sha256": SHA}}]},
     "spec.models: model names must be unique"),
    ({"module": {"image": "r/a:1", "url": "https://h/a.wasm", "sha256": SHA}},
     "spec.module: set exactly one of image, url or configMap"),
    ({"module": {"url": "https://h/a.wasm"}}, "spec.module.url needs spec.module.sha256"),
    ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must not exceed maxReplicas"),
])
def test_invalid_specs_rejected_with_cel_messages(cluster: Cluster, operator: OperatorProcess, ns: str,
                                                  spec: Obj, message: str) -> None:
    proc = cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(wasminference("bad", **spec)), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert get(cluster, ns, "wasminference", "bad") is None


def test_bad_sha256_rejected_by_schema(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    bad = wasminference("bad", module={"url": "https://h/a.wasm", "sha256": "XYZ"})
    proc = cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(bad), check=False)
    assert proc.returncode != 0 and "spec.module.sha256" in proc.stderr and "^[a-f0-9]{64}$" in proc.stderr


def test_deleting_the_cr_removes_every_child(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    cluster.apply(wasminference("gone", replicas=2), namespace=ns)
    wait_ready(cluster, ns, "gone")
    assert children(cluster, ns, "gone") == {"Deployment": 1, "Service": 1, "PodDisruptionBudget": 1, "Pod": 2}
    cluster.kubectl("-n", ns, "delete", "wasminference", "gone", "--wait=true", timeout=60)
    cluster.wait_until(lambda: children(cluster, ns, "gone") == {}, 60, "children garbage-collected")


def test_deletion_does_not_wait_for_the_operator(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    cluster.apply(wasminference("orphan"), namespace=ns)
    wi = wait_ready(cluster, ns, "orphan")
    assert not wi["metadata"].get("finalizers")  # deletion is the garbage collector's job
    operator.stop()
    try:
        cluster.kubectl("-n", ns, "delete", "wasminference", "orphan", "--wait=true", timeout=30)
        cluster.wait_until(lambda: children(cluster, ns, "orphan") == {}, 60, "children garbage-collected")
    finally:
        operator.start()


def test_edited_or_deleted_children_are_repaired(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    cluster.apply(wasminference("drift", gpu={"count": 1, "product": A100}), namespace=ns)
    wait_ready(cluster, ns, "drift")
    svc_uid = (get(cluster, ns, "service", "drift") or {})["metadata"]["uid"]

    # By hand: drop the GPU limit and the product selector, and delete the Service.
    cluster.kubectl("-n", ns, "patch", "deployment", "drift", "--type=json", "-p", json.dumps([
        {"op": "remove", "path": "/spec/template/spec/nodeSelector"},
        {"op": "replace", "path": "/spec/replicas", "value": 4},
    ]))
    cluster.kubectl("-n", ns, "delete", "service", "drift")

    def repaired() -> bool:
        dep = get(cluster, ns, "deployment", "drift") or {}
        svc = get(cluster, ns, "service", "drift")
        spec = dep.get("spec", {})
        return (spec.get("replicas") == 1
                and spec["template"]["spec"].get("nodeSelector") == {"nvidia.com/gpu.product": A100}
                and svc is not None and svc["metadata"]["uid"] != svc_uid)

    cluster.wait_until(repaired, 30, "Deployment reverted and Service re-created")
    wait_ready(cluster, ns, "drift")
    repairs = [e["message"] for e in events(cluster, ns, "drift") if e["reason"] == "Repaired"]
    assert any("Service drift re-created" in m for m in repairs), repairs
    assert any("Deployment drift reverted" in m for m in repairs), repairs
    assert 'kwasi_operator_repairs_total{kind="Deployment"}' in operator.metrics()


def test_missing_configmap_reported_then_retried(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    cluster.apply(wasminference("fromcm", module={"configMap": {"name": "app", "key": "app.wasm"}}), namespace=ns)

    def failed() -> Obj | None:
        wi = get(cluster, ns, "wasminference", "fromcm")
        return wi if cond(wi, "Degraded").get("reason") == "ConfigMapNotFound" else None

    wi = cluster.wait_until(failed, 30, "Degraded=ConfigMapNotFound")
    assert wi["status"]["phase"] == "Failed" and cond(wi, "Degraded")["status"] == "True"
    assert "endpoint" not in wi["status"]  # no Service: nothing to advertise
    assert f"{ns}/app does not exist" in cond(wi, "Ready")["message"]
    assert get(cluster, ns, "deployment", "fromcm") is None  # no stuck pods for a spec that cannot work
    assert "ConfigMapNotFound" in reasons(cluster, ns, "fromcm")
    assert operator.alive()

    cluster.kubectl("-n", ns, "create", "configmap", "app", "--from-literal=app.wasm=not-really-wasm")
    wi = wait_ready(cluster, ns, "fromcm", timeout=60)
    assert cond(wi, "Degraded")["status"] == "False"
    assert wi["status"]["endpoint"] == f"fromcm.{ns}.svc.cluster.local:8080"
    assert "Resolved" in reasons(cluster, ns, "fromcm")


def test_scale_to_zero_without_the_feature_gate_is_reported(cluster: Cluster, operator: OperatorProcess,
                                                            ns: str) -> None:
    # HPAScaleToZero is off in this cluster (as by default): the HPA is refused; the app still runs on one
    # replica (no replicas in the Deployment: the HPA owns that field), and status says what to change.
    cluster.apply(wasminference("zero", autoscaling={"minReplicas": 0, "maxReplicas": 3}), namespace=ns)

    def degraded() -> Obj | None:
        wi = get(cluster, ns, "wasminference", "zero")
        return wi if cond(wi, "Degraded").get("reason") == "ScaleToZeroUnavailable" else None

    wi = cluster.wait_until(degraded, 30, "Degraded=True, ScaleToZeroUnavailable")
    assert cond(wi, "Degraded")["status"] == "True" and "HPAScaleToZero" in cond(wi, "Degraded")["message"]
    assert "minReplicas" in cond(wi, "Degraded")["message"]  # the API server's own words are passed on
    assert get(cluster, ns, "hpa", "zero") is None
    assert (get(cluster, ns, "deployment", "zero") or {})["spec"]["replicas"] == 1
    cluster.wait_until(lambda: "ScaleToZeroUnavailable" in reasons(cluster, ns, "zero") or None, 20, "Warning event")


def test_autoscaling_renders_hpa_and_monitors_follow_the_crds(cluster: Cluster, operator: OperatorProcess,
                                                             ns: str) -> None:
    spec = {"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "metric": "queue", "target": 2},
            "metrics": {"serviceMonitor": True, "podMonitor": True}}
    cluster.apply(wasminference("auto", **spec), namespace=ns)
    wait_ready(cluster, ns, "auto")
    hpa = get(cluster, ns, "hpa", "auto")
    assert hpa is not None
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "auto"}
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "kwasi_requests_waiting"
    # No monitoring.coreos.com CRDs in this cluster: no monitors (and no errors).
    assert cluster.kubectl("get", "crd", "servicemonitors.monitoring.coreos.com", check=False).returncode != 0

    for plural in MONITOR_CRDS:
        cluster.apply(_monitor_crd(plural))
    try:
        for plural in MONITOR_CRDS:
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{plural}.monitoring.coreos.com")
        cluster.wait_until(lambda: all(get(cluster, ns, f"{p}.monitoring.coreos.com", "auto") for p in MONITOR_CRDS),
                           45, "ServiceMonitor and PodMonitor applied once the CRDs exist")
        sm = get(cluster, ns, "servicemonitors.monitoring.coreos.com", "auto")
        assert sm is not None and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    finally:
        for plural in MONITOR_CRDS:
            cluster.kubectl("delete", "crd", f"{plural}.monitoring.coreos.com", "--wait=false", check=False)


def _monitor_crd(plural: str) -> Obj:
    kind = {"servicemonitors": "ServiceMonitor", "podmonitors": "PodMonitor"}[plural]
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


def test_restart_resumes_without_duplicate_work(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    cluster.apply(wasminference("steady", replicas=2), namespace=ns)
    wait_ready(cluster, ns, "steady")
    wi_before = settled(cluster, ns, "steady")
    before = {kind: (get(cluster, ns, kind, "steady") or {})["metadata"] for kind in ("deployment", "service", "pdb")}
    created_events = reasons(cluster, ns, "steady").count("Created")
    events_before = len(events(cluster, ns, "steady"))

    operator.restart()
    cluster.wait_until(lambda: 'kwasi_operator_reconciles_total{result="ok",trigger="resume"}' in operator.metrics(),
                       30, "resume handled after restart")
    cluster.wait_until(lambda: 'kwasi_operator_reconciles_total{result="ok",trigger="resync"}' in operator.metrics(),
                       30, "a resync pass after restart")
    time.sleep(1.5)  # longer than the status coalescing window: a status write would have happened by now
    # Nothing changed, so nothing is written: not the status, not one condition's lastTransitionTime.
    wi_restarted = get(cluster, ns, "wasminference", "steady") or {}
    assert wi_restarted["metadata"]["resourceVersion"] == wi_before["metadata"]["resourceVersion"]
    assert wi_restarted["status"] == wi_before["status"]
    assert len(events(cluster, ns, "steady")) == events_before
    after = {kind: (get(cluster, ns, kind, "steady") or {})["metadata"] for kind in ("deployment", "service", "pdb")}
    for kind, meta in before.items():  # same objects, not re-written (a no-op apply keeps resourceVersion)
        assert (after[kind]["uid"], after[kind]["resourceVersion"]) == (meta["uid"], meta["resourceVersion"]), kind
    assert children(cluster, ns, "steady") == {"Deployment": 1, "Service": 1, "PodDisruptionBudget": 1, "Pod": 2}
    assert reasons(cluster, ns, "steady").count("Created") == created_events
    wi_after = get(cluster, ns, "wasminference", "steady") or {}
    assert wi_after["metadata"]["generation"] == wi_before["metadata"]["generation"]
    assert 'trigger="create"' not in operator.metrics()  # the new process created nothing
    annotations = set(wi_after["metadata"].get("annotations") or {})  # the operator writes only status
    assert annotations == {"kubectl.kubernetes.io/last-applied-configuration"}
    assert not wi_after["metadata"].get("finalizers")

    # A change made while no operator runs is an update for the next one (status.observedGeneration is behind).
    operator.stop()
    cluster.kubectl("-n", ns, "patch", "wasminference", "steady", "--type=merge", "-p", '{"spec":{"replicas":3}}')
    operator.start()
    cluster.wait_until(lambda: (get(cluster, ns, "deployment", "steady") or {})["spec"]["replicas"] == 3 or None,
                       30, "Deployment scaled by the update found at start-up")
    cluster.wait_until(lambda: 'kwasi_operator_reconciles_total{result="ok",trigger="update"}' in operator.metrics()
                       or None, 20, "the update reconcile done")  # it goes on after the Deployment apply
    cluster.wait_until(lambda: "Updated" in reasons(cluster, ns, "steady") or None, 20, "Updated event")


def settled(cluster: Cluster, ns: str, name: str, quiet_s: float = 3.0) -> Obj:
    """The object once its resourceVersion has not changed for ``quiet_s`` (status fully published)."""
    last, since = None, time.monotonic()
    deadline = since + 60
    while time.monotonic() < deadline:
        wi = get(cluster, ns, "wasminference", name) or {}
        rv = wi.get("metadata", {}).get("resourceVersion")
        if rv != last:
            last, since = rv, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return wi
        time.sleep(0.25)
    raise AssertionError(f"{ns}/{name} kept changing")


def test_runs_under_its_own_least_privilege_rbac(cluster: Cluster, operator: OperatorProcess) -> None:
    kubeconfig = yaml_load(operator.kubeconfig)
    assert set(kubeconfig["users"][0]["user"]) == {"token"}  # no admin certificate: the SA token only
    whoami = cluster.kubectl("--kubeconfig", str(operator.kubeconfig), "auth", "whoami", "-o", "json")
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == SA_USER
    # No RBAC denial anywhere in its log (403s for namespaces being deleted are not RBAC).
    denials = re.findall(r"cannot (?:get|list|watch|create|patch|update|delete) resource .{0,80}", operator.log())
    assert not denials, denials

    def can(*args: str) -> bool:
        return cluster.kubectl("auth", "can-i", *args, "--as", SA_USER, check=False).stdout.strip() == "yes"

    assert can("watch", "wasminferences.kwasi.dev", "-A")
    assert can("patch", "wasminferences.kwasi.dev", "--subresource=status", "-A")
    assert can("create", "deployments.apps", "-n", "default") and can("watch", "pods", "-A")
    # What it owns it can watch (drift is repaired from the children's events), and CRDs it can only read.
    # (ScaledObjects and InferencePools too, proven where their CRDs are installed: test_operator_scaling.py,
    # test_operator_gateway.py; kubectl cannot name a kind whose CRD is absent.)
    for child in ("deployments.apps", "services", "poddisruptionbudgets.policy", "horizontalpodautoscalers",
                  "persistentvolumeclaims", "networkpolicies.networking.k8s.io"):
        assert can("watch", child, "-A"), child
    # spec.modelServer's Deployment and Service are deleted when the spec drops it.
    assert can("delete", "deployments.apps", "-A") and can("delete", "services", "-A")
    assert can("watch", "customresourcedefinitions.apiextensions.k8s.io")
    # Nothing it does not need:
    for denied in (("get", "secrets", "-A"), ("patch", "wasminferences.kwasi.dev", "-A"),
                   ("create", "pods", "-n", "default"), ("update", "deployments.apps", "-A"),
                   ("delete", "wasminferences.kwasi.dev", "-A"), ("create", "wasminferences.kwasi.dev", "-A"),
                   ("delete", "pods", "-A"), ("update", "customresourcedefinitions.apiextensions.k8s.io"),
                   ("get", "customresourcedefinitions.apiextensions.k8s.io/wasminferences.kwasi.dev"),
                   ("list", "namespaces"), ("create", "clusterroles.rbac.authorization.k8s.io"),
                   ("patch", "nodes"), ("create", "serviceaccounts/token", "-A"),
                   ("create", "persistentvolumes"), ("create", "roles.rbac.authorization.k8s.io", "-A")):
        assert not can(*denied), denied
    role = json.loads(cluster.kubectl("get", "clusterrole", "kwasi-operator", "-o", "json").stdout)
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule


def test_metrics_and_healthz(operator: OperatorProcess) -> None:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=5) as r:
        assert r.status == 200
    text = operator.metrics()
    for name in ("kwasi_operator_reconciles_total", "kwasi_operator_reconcile_errors_total",
                 "kwasi_operator_reconcile_duration_seconds_bucket", "kwasi_operator_status_updates_total"):
        assert name in text, name


def yaml_load(path: Path) -> Obj:
    import yaml

    out: Obj = yaml.safe_load(path.read_text())
    return out
