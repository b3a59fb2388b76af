"""spec.modelServer end to end on the local control plane: the operator splits a WasmInference into a GPU
model-server Deployment (NNRPC with TLS from a Secret or from cert-manager) and a CPU-only guest Deployment,
scales them independently, reports both sides in status, and folds them back together when the switch goes.

kwok runs the pods (no containers): these tests prove what the cluster is asked for, where it schedules it and
what the operator reports; tests/runtime/nnrpc proves the same runtime flags serve real guests over TLS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kwasi_operator_dev.local import OperatorProcess
from kwasi_testing.kube_objects import (
    cond,
    get,
    namespace_fixture,
    operator_fixture,
    reasons,
    wasminference,
)
from kwasi_testing.nnrpc import make_tls

if TYPE_CHECKING:
    from kwasi_testing.cluster import Cluster

A100 = "NVIDIA-A100-SXM4-40GB"
operator = operator_fixture("model-server", "--resync-seconds", "2", "--backoff-seconds", "0.5")
ns = namespace_fixture("ms")
CERT_CRD = "certificates.cert-manager.io"
Obj = dict[str, Any]


def split(name: str, **server: Any) -> Obj:
    return wasminference(name, replicas=2, gpu={"count": 1, "product": A100},
                         modelServer={"replicas": 1, "tls": {"secretName": f"{name}-tls"}, **server})


def tls_secret(cluster: Cluster, ns: str, name: str, tmp: Path) -> None:
    pki = make_tls(tmp, (f"{name}-model-server.{ns}.svc",))
    cluster.kubectl("-n", ns, "create", "secret", "generic", f"{name}-tls", f"--from-file=tls.crt={pki['server.crt']}",
                    f"--from-file=tls.key={pki['server.key']}", f"--from-file=ca.crt={pki['ca.crt']}")


def pods(cluster: Cluster, ns: str, selector: str) -> list[Obj]:
    return list((get(cluster, ns, "pods", "-l", selector) or {}).get("items", []))


def sides_ready(cluster: Cluster, ns: str, name: str, guests: int, servers: int) -> Obj:
    def ready() -> Obj | None:
        wi = get(cluster, ns, "wasminference", name) or {}
        st = wi.get("status", {})
        ok = (st.get("readyReplicas") == guests and st.get("modelServer", {}).get("readyReplicas") == servers
              and cond(wi, "Ready").get("status") == "True")
        return wi if ok else None

    return cluster.wait_until(ready, 60, f"{guests} guests and {servers} model servers ready", interval=0.5)


def test_split_scheduled_on_cpu_and_gpu_scaled_apart_and_folded_back(cluster: Cluster, operator: OperatorProcess,
                                                                     ns: str, tmp_path: Path) -> None:
    tls_secret(cluster, ns, "chat", tmp_path)
    cluster.apply(split("chat"), namespace=ns)
    wi = sides_ready(cluster, ns, "chat", 2, 1)
    st = wi["status"]
    assert st["endpoint"] == f"chat.{ns}.svc.cluster.local:8080"
    assert st["modelServer"]["endpoint"] == f"chat-model-server.{ns}.svc:50051"
    assert cond(wi, "ModelServerReady")["status"] == "True"

    guest = get(cluster, ns, "deployment", "chat")
    server = get(cluster, ns, "deployment", "chat-model-server")
    assert guest is not None and server is not None
    assert server["metadata"]["ownerReferences"][0]["uid"] == wi["metadata"]["uid"]
    g_pod, s_pod = guest["spec"]["template"]["spec"], server["spec"]["template"]["spec"]
    g_args, s_args = g_pod["containers"][0]["args"], s_pod["containers"][0]["args"]
    assert g_args[g_args.index("--nn-rpc-uri") + 1] == f"chat-model-server.{ns}.svc:50051"
    assert "--nn-preload" not in g_args and not g_pod["containers"][0].get("resources")  # no GPU here
    assert s_args[0] == "nn-rpc-server" and "--tls-cert" in s_args and "--nn-preload" in s_args
    assert s_pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    # The guests run on the CPU node; the GPU goes to the model server, on the node with the product asked for.
    assert {p["spec"]["nodeName"] for p in pods(cluster, ns, "kwasi.dev/wasminference=chat")} == {"kwok-cpu"}
    assert [p["spec"]["nodeName"] for p in pods(cluster, ns, "kwasi.dev/model-server=chat")] == ["kwok-gpu-a100"]
    svc = get(cluster, ns, "service", "chat-model-server")
    assert svc is not None and [p["name"] for p in svc["spec"]["ports"]] == ["grpc", "metrics"]
    policy = get(cluster, ns, "networkpolicy", "chat-model-server")
    assert policy is not None and policy["spec"]["podSelector"]["matchLabels"] == {"kwasi.dev/model-server": "chat"}

    # Each side scales on its own: kubectl scale moves the guests, spec.modelServer.replicas the model server.
    cluster.kubectl("-n", ns, "scale", "wasminference", "chat", "--replicas=3")
    sides_ready(cluster, ns, "chat", 3, 1)
    cluster.kubectl("-n", ns, "patch", "wasminference", "chat", "--type=merge",
                    "-p", json.dumps({"spec": {"modelServer": {"replicas": 2}}}))
    sides_ready(cluster, ns, "chat", 3, 2)
    assert get(cluster, ns, "pdb", "chat-model-server") is not None

    # Without the switch, one Deployment holds guests and models again; the model server's children go.
    cluster.kubectl("-n", ns, "patch", "wasminference", "chat", "--type=json",
                    "-p", json.dumps([{"op": "remove", "path": "/spec/modelServer"}]))
    for kind in ("deployment", "service", "networkpolicy", "pdb"):
        cluster.wait_until(lambda k=kind: get(cluster, ns, k, "chat-model-server") is None, 30,  # type: ignore[misc]
                           f"{kind} chat-model-server pruned")
    def folded_back() -> Any:
        # Ready alone can be the status from before the patch: wait for the status of this generation.
        wi = get(cluster, ns, "wasminference", "chat")
        current = wi is not None and wi.get("status", {}).get("observedGeneration") == wi["metadata"]["generation"]
        return wi if current and cond(wi, "Ready").get("status") == "True" else None

    wi = cluster.wait_until(folded_back, 60, "WasmInference chat Ready at its new generation", interval=0.5)
    assert "modelServer" not in wi["status"] and not cond(wi, "ModelServerReady")
    guest = get(cluster, ns, "deployment", "chat")
    assert guest is not None and "--nn-preload" in guest["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "Pruned" in reasons(cluster, ns, "chat")


def test_cert_manager_issuer_needs_cert_manager(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    cluster.apply(split("issued", tls={"issuerRef": {"name": "cluster-ca", "kind": "ClusterIssuer"}}), namespace=ns)

    def degraded() -> Obj | None:
        wi = get(cluster, ns, "wasminference", "issued")
        return wi if cond(wi, "Degraded").get("reason") == "CertManagerNotInstalled" else None

    cluster.wait_until(degraded, 30, "CertManagerNotInstalled")
    cluster.apply(_certificate_crd())
    try:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{CERT_CRD}")
        cert = cluster.wait_until(lambda: get(cluster, ns, CERT_CRD, "issued-model-server"), 45,
                                  "a Certificate once cert-manager is there")
        assert cert["spec"]["secretName"] == "issued-model-server-tls"
        assert f"issued-model-server.{ns}.svc" in cert["spec"]["dnsNames"]
        assert cert["spec"]["issuerRef"] == {"name": "cluster-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
        sides_ready(cluster, ns, "issued", 2, 1)
    finally:
        cluster.kubectl("delete", "crd", CERT_CRD, "--wait=false", check=False)


def _certificate_crd() -> Obj:
    """cert-manager's Certificate type as far as the API server needs it (no cert-manager controller here)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": CERT_CRD},
        "spec": {"group": "cert-manager.io", "scope": "Namespaced",
                 "names": {"kind": "Certificate", "plural": "certificates", "singular": "certificate",
                           "listKind": "CertificateList"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


@pytest.mark.parametrize(("name", "server", "message"), [
    ("no-tls", {"replicas": 1}, "spec.modelServer.tls: Required value"),
    ("both", {"tls": {"secretName": "s", "issuerRef": {"name": "ca"}}}, "set exactly one of secretName or issuerRef"),
    ("x" * 51, {"tls": {"secretName": "s"}}, "at most 50 characters"),
])
def test_invalid_model_server_specs_rejected(cluster: Cluster, operator: OperatorProcess, ns: str, name: str,
                                             server: Obj, message: str) -> None:
    body = wasminference(name, modelServer=server)
    proc = cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(body), check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    no_models = wasminference("empty", models=[], modelServer={"tls": {"secretName": "s"}})
    proc = cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(no_models), check=False)
    assert proc.returncode != 0 and "give at least one model" in proc.stderr, proc.stderr
