"""spec.modelServer on the real node: the Helm-installed operator turns the CPU sample with a model server into a
model-server pod that really runs `kwasi-runtime nn-rpc-server` (SmolLM2 from the model image, TLS from a
Secret) and a guest Deployment; a streaming guest on this host reaches the pod over TLS, checking the
certificate's Service name, and answers as it does locally; plaintext is refused; its /metrics count the calls.

What this cluster cannot show: its pods have no DNS and no kube-proxy (hack/cluster/README.md), so Service names
do not resolve and ClusterIPs do not route; the guest pods are scheduled on kwok (no containers) and their
traffic to the Service is proven by tests/runtime/nnrpc (the same `serve --nn-rpc-uri … --nn-rpc-tls-ca` flags).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kwasi_testing.guests import built_guest
from kwasi_testing.journey import CPU_SAMPLE, START_TIMEOUT_S, http_get, pod_ready
from kwasi_testing.kube_objects import cond, get
from kwasi_testing.nnrpc import cli, make_tls, quiet_env

if TYPE_CHECKING:
    from kwasi_testing.cluster import Journey

NAME = "smollm2-split"
CHAT = json.dumps([{"role": "user", "content": "What is the capital of France?"}])
GREEDY_CHAT = json.dumps({"chat": True, "temp": 0, "ctx-size": 512, "n-gpu-layers": 0})
Obj = dict[str, Any]


def split_sample() -> Obj:
    """The CPU sample with its model moved to a model server (which takes its resources and scheduling)."""
    sample: Obj = yaml.safe_load(CPU_SAMPLE.read_text())
    sample["metadata"]["name"] = NAME
    spec = sample["spec"]
    spec["modelServer"] = {"replicas": 1, "maxConcurrency": 2, "tls": {"secretName": f"{NAME}-tls"},
                           "resources": spec.pop("resources")}
    spec.pop("metrics", None)
    return sample


def test_the_model_server_pod_serves_a_guest_over_tls(journey: Journey, tmp_path: Path) -> None:
    c, ns = journey.cluster, journey.apps
    server_name = f"{NAME}-model-server.{ns}.svc"
    pki = make_tls(tmp_path, (server_name,))
    c.kubectl("-n", ns, "create", "secret", "generic", f"{NAME}-tls", f"--from-file=tls.crt={pki['server.crt']}",
              f"--from-file=tls.key={pki['server.key']}", f"--from-file=ca.crt={pki['ca.crt']}")
    c.apply(split_sample(), namespace=ns)

    def serving() -> tuple[Obj, Obj] | None:
        wi = get(c, ns, "wasminference", NAME)
        out = get(c, ns, "pods", "-l", f"kwasi.dev/model-server={NAME}") or {}
        live = [p for p in out.get("items", []) if pod_ready(p)]
        if wi is None or cond(wi, "Ready").get("status") != "True" or len(live) != 1:
            return None
        return wi, live[0]

    wi, pod = c.wait_until(serving, START_TIMEOUT_S, f"{NAME}: model server Ready on the real node", interval=1)
    assert wi["status"]["modelServer"]["readyReplicas"] == 1 and cond(wi, "ModelServerReady")["status"] == "True"
    node = get(c, "default", "node", pod["spec"]["nodeName"]) or {}
    assert node["metadata"]["labels"].get("kwasi.dev/real-node") == "true"
    assert "nn-rpc-server listening on 0.0.0.0:50051" in c.kubectl("-n", ns, "logs", pod["metadata"]["name"]).stdout
    ip = pod["status"]["podIP"]

    base = ["run", "--nn-rpc-uri", f"{ip}:50051", "--nn-rpc-connect-timeout", "30"]
    guest: list[str | Path] = [built_guest("llm_stream"), "default", CHAT, GREEDY_CHAT]
    tls = ["--nn-rpc-tls-ca", str(pki["ca.crt"]), "--nn-rpc-tls-server-name", server_name]
    remote = subprocess.run(cli(*base, *tls, *guest), capture_output=True, text=True, timeout=300, env=quiet_env())
    assert remote.returncode == 0 and "Paris" in remote.stdout, remote.stderr
    assert "[stop] code 100" in remote.stderr
    plain = subprocess.run(cli(*base[:-1], "3", "--nn-rpc-insecure", *guest), capture_output=True, text=True,
                           timeout=300, env=quiet_env())
    assert plain.returncode == 1 and "failed: 5" in plain.stderr  # the pod speaks TLS only
    status, metrics = http_get(f"http://{ip}:9090/metrics")
    assert status == 200 and 'kwasi_nnrpc_calls_total{method="Generate"}' in metrics
    assert 'kwasi_generation_tokens_total{model="default",module="nnrpc"}' in metrics

    c.kubectl("-n", ns, "delete", "wasminference", NAME)
    c.wait_until(lambda: not (get(c, ns, "pods", "-l", f"kwasi.dev/model-server={NAME}") or {}).get("items"), 120,
                 "the model-server pod gone with its WasmInference")
