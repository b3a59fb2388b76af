"""spec.modelServer's names, labels, and the guests' side of the connection (NNRPC over TLS to a Service).

The model server's pods carry their own label (``kwasi.dev/model-server``) instead of the instance label:
the guests' Deployment and Service select on the instance label and must never match a model-server pod.
Its other objects carry both (the instance label is how the operator finds an object's owner).
"""

from __future__ import annotations

from kwasi_operator.render.meta import SERVER_LABEL
from kwasi_operator.render.volumes import PodFiles
from kwasi_operator.spec import Obj, Spec

__all__ = ["SERVER_LABEL", "client_args", "dns_names", "server_host", "server_name", "server_selector", "tls_secret",
           "tls_volume"]
SERVER_SUFFIX = "-model-server"
TLS_DIR = "/tls"
# The guests wait this long for the model server on their first call (it may still be loading its models).
CONNECT_TIMEOUT_S = 300


def server_name(name: str) -> str:
    return f"{name}{SERVER_SUFFIX}"


def server_selector(name: str) -> dict[str, str]:
    return {SERVER_LABEL: name}


def server_host(name: str, namespace: str) -> str:
    """The name guests dial, and so the name the server's certificate must carry."""
    return f"{server_name(name)}.{namespace}.svc"


def dns_names(name: str, namespace: str) -> list[str]:
    short = server_name(name)
    return [short, f"{short}.{namespace}", f"{short}.{namespace}.svc", f"{short}.{namespace}.svc.cluster.local"]


def tls_secret(name: str, spec: Spec) -> str:
    server = spec.model_server
    assert server is not None
    return server.tls_secret or f"{server_name(name)}-tls"  # cert-manager writes the latter


def tls_volume(name: str, spec: Spec, keys: tuple[str, ...]) -> tuple[Obj, Obj]:
    """(volume, mount): `keys` of the TLS Secret read-only at /tls (the key never on the guests' pods)."""
    items = [{"key": k, "path": k} for k in keys]
    return ({"name": "tls", "secret": {"secretName": tls_secret(name, spec), "items": items, "defaultMode": 0o440}},
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": True})


def client_args(name: str, namespace: str, spec: Spec, files: PodFiles) -> list[str]:
    """The guests' flags: every WASI-NN call to the model server's Service, checked against the Secret's CA."""
    server = spec.model_server
    assert server is not None
    files.add(*tls_volume(name, spec, ("ca.crt",)))
    return ["--nn-rpc-uri", f"{server_host(name, namespace)}:{server.port}",
            "--nn-rpc-tls-ca", f"{TLS_DIR}/ca.crt",
            "--nn-rpc-connect-timeout", str(CONNECT_TIMEOUT_S)]
