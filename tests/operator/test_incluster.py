"""In-cluster login without DNS: the API server's address comes from what the kubelet injects."""

from __future__ import annotations

from kwasi_operator.kube.incluster import server_from_env


def test_the_injected_service_address_names_the_api_server() -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.250.1.129", "KUBERNETES_SERVICE_PORT": "443"}
    assert server_from_env(env) == "https://10.250.1.129:443"
    assert server_from_env({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}) == \
        "https://[fd00::1]:6443"


def test_without_the_variables_kopf_keeps_its_default() -> None:
    assert server_from_env({}) is None
    assert server_from_env({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None
