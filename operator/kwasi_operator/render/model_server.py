"""spec.modelServer's children: the models in their own (GPU) Deployment running `kwasi-runtime nn-rpc-server`
with TLS from a Secret (or from cert-manager), its Service, a NetworkPolicy that lets only this object's guest
pods reach its gRPC port, and its own PDB and HPA: replicas and autoscaling independent of the guests'.

The Deployment, PDB and HPA are what the usual renderers make of the server side of the spec
(:meth:`Spec.server_side`: the models, GPUs, scheduling, model cache, its replicas, autoscaling and resources),
moved to the model server's name, labels, container and ports: one renderer per concern for both sides.
"""

from __future__ import annotations

import copy
from typing import Any

from kwasi_operator import kinds
from kwasi_operator.render.meta import INSTANCE_LABEL, manifest
from kwasi_operator.render.nnrpc import (
    SERVER_LABEL,
    TLS_DIR,
    dns_names,
    server_name,
    server_selector,
    tls_secret,
    tls_volume,
)
from kwasi_operator.render.pod import deployment
from kwasi_operator.render.scaling import horizontal_pod_autoscaler, pod_disruption_budget
from kwasi_operator.spec import Obj, Spec

SERVER_ONLY = ("tls", "module")  # volumes: the server's key is its own; it runs no guest


def _moved(child: Obj, name: str) -> Obj:
    """`child` (named and labelled for the WasmInference) as the model server's: its name, and its label
    beside the instance label (which tells the operator whose object it is)."""
    out = copy.deepcopy(child)
    out["metadata"]["name"] = server_name(name)
    out["metadata"]["labels"] = {**out["metadata"]["labels"], "app.kubernetes.io/name": "kwasi-model-server",
                                 SERVER_LABEL: name}
    return out


def _select_server(obj: Any, name: str) -> Any:
    """Every `matchLabels` of the instance (selectors, pod affinity) selects the model server's pods instead."""
    if isinstance(obj, dict):
        if obj.get("matchLabels") == {INSTANCE_LABEL: name}:
            return {**obj, "matchLabels": server_selector(name)}
        return {k: _select_server(v, name) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_select_server(v, name) for v in obj]
    return obj


def server_args(spec: Spec, serve_args: list[str]) -> list[str]:
    """nn-rpc-server's arguments; the models' --nn-preload / --nn-config as `serve` would have taken them."""
    server = spec.model_server
    assert server is not None
    models = [a for i, a in enumerate(serve_args) if a in ("--nn-preload", "--nn-config")
              or (i > 0 and serve_args[i - 1] in ("--nn-preload", "--nn-config"))]
    return ["nn-rpc-server",
            "--nn-rpc-uri", f"0.0.0.0:{server.port}",
            "--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key",
            "--max-concurrency", str(server.max_concurrency),
            "--metrics-address", f"0.0.0.0:{server.metrics_port}",
            *models]


def server_deployment(name: str, namespace: str, spec: Spec) -> Obj:
    server = spec.model_server
    assert server is not None
    dep: Obj = _select_server(_moved(deployment(name, namespace, spec.server_side()), name), name)
    template = dep["spec"]["template"]
    pod_labels = {k: v for k, v in template["metadata"]["labels"].items() if k != INSTANCE_LABEL}
    template["metadata"]["labels"] = {**pod_labels, "app.kubernetes.io/name": "kwasi-model-server",
                                      **server_selector(name)}
    pod = template["spec"]
    volume, mount = tls_volume(name, spec, ("tls.crt", "tls.key"))
    pod["volumes"] = [*(v for v in pod["volumes"] if v["name"] not in SERVER_ONLY), volume]
    pod["initContainers"] = [c for c in pod.get("initContainers", []) if c["name"] not in ("copy-module",
                                                                                          "fetch-module")]
    if not pod["initContainers"]:
        del pod["initContainers"]
    [c] = pod["containers"]
    c["name"] = "model-server"
    c["args"] = server_args(spec, c["args"])
    c["ports"] = [{"name": "grpc", "containerPort": server.port, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": server.metrics_port, "protocol": "TCP"}]
    c["volumeMounts"] = [*(m for m in c["volumeMounts"] if m["name"] not in SERVER_ONLY), mount]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        c[probe]["httpGet"]["port"] = "metrics"  # kubelets' gRPC probes cannot speak TLS: the HTTP side answers
    return dep


def server_service(name: str, namespace: str, spec: Spec) -> Obj:
    server = spec.model_server
    assert server is not None
    return _moved(manifest(kinds.SERVICE, name, namespace, {"selector": server_selector(name), "ports": [
        {"name": "grpc", "port": server.port, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
        {"name": "metrics", "port": server.metrics_port, "targetPort": "metrics", "protocol": "TCP"},
    ]}), name)


def network_policy(name: str, namespace: str, spec: Spec) -> Obj:
    """Only this WasmInference's guest pods may open the gRPC port; metrics stay open to scrapers."""
    return _moved(manifest(kinds.NETWORK_POLICY, name, namespace, {
        "podSelector": {"matchLabels": server_selector(name)},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {INSTANCE_LABEL: name}}}],
             "ports": [{"port": "grpc", "protocol": "TCP"}]},
            {"ports": [{"port": "metrics", "protocol": "TCP"}]},
        ],
    }), name)


def certificate(name: str, namespace: str, spec: Spec) -> Obj | None:
    """A cert-manager Certificate for the Service's names when spec.modelServer.tls.issuerRef is set."""
    server = spec.model_server
    if server is None or not server.issuer:
        return None
    issuer = {"name": server.issuer["name"], "kind": server.issuer.get("kind", "Issuer"),
              "group": server.issuer.get("group", "cert-manager.io")}
    return _moved(manifest(kinds.CERTIFICATE, name, namespace, {
        "secretName": tls_secret(name, spec), "dnsNames": dns_names(name, namespace), "issuerRef": issuer,
        "usages": ["server auth", "digital signature", "key encipherment"]}), name)


def render_model_server(name: str, namespace: str, spec: Spec) -> list[Obj]:
    """Every model-server child the spec asks for (none without spec.modelServer), in kinds.CHILDREN order."""
    if spec.model_server is None:
        return []
    side = spec.server_side()
    pdb = pod_disruption_budget(name, namespace, side)
    hpa = horizontal_pod_autoscaler(name, namespace, side)
    if hpa is not None:
        hpa["spec"]["scaleTargetRef"]["name"] = server_name(name)
    children = [server_deployment(name, namespace, spec), server_service(name, namespace, spec),
                _select_server(_moved(pdb, name), name) if pdb else None, _moved(hpa, name) if hpa else None,
                network_policy(name, namespace, spec), certificate(name, namespace, spec)]
    return [c for c in children if c is not None]


