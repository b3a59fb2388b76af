"""Logging in from inside a pod without cluster DNS.

kopf's own service-account login names the API server ``kubernetes.default.svc``, which only resolves where
the cluster runs a DNS service. The kubelet gives every container the `kubernetes` Service's address in
KUBERNETES_SERVICE_HOST/PORT, and that is what client-go's in-cluster configuration uses; so do we.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import kopf


def server_from_env(env: Mapping[str, str]) -> str | None:
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def login_in_cluster(**kw: Any) -> kopf.ConnectionInfo | None:
    """The pod's ServiceAccount credentials (kopf's reader), for the API server at the injected address."""
    info = kopf.login_with_service_account(**kw)
    server = server_from_env(os.environ)
    return dataclasses.replace(info, server=server) if info is not None and server else info
