"""Run the operator against a local cluster (hack/cluster/cluster.sh) the way a pod runs it.

Used by the end-to-end tests, ``bench/operator.py`` and ``make cluster-demo``: install the CRD and
the RBAC manifests, mint a token for the operator's ServiceAccount (TokenRequest), write a
kubeconfig that authenticates with that token only, and run ``kwasi-operator`` as a subprocess
with it, so every call the operator makes is authorised by its own ClusterRole.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "crds" / "kwasi.dev_wasminferences.yaml"
RBAC = REPO / "operator" / "deploy" / "rbac.yaml"
NAMESPACE = "kwasi-system"
SERVICE_ACCOUNT = "kwasi-operator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Kubectl:
    """kubectl with a fixed kubeconfig (the admin's, for setting things up)."""

    def __init__(self, kubeconfig: Path, binary: str | None = None, env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.binary = binary or shutil.which("kubectl") or "kubectl"
        self.env = env

    def __call__(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run([self.binary, "--kubeconfig", str(self.kubeconfig), *args], input=input,
                              capture_output=True, text=True, timeout=timeout, env=self.env, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
        return proc.stdout


def wait_established(kubectl: Kubectl, crd: str, timeout: float = 60) -> None:
    """Until the CRD is Established (`kubectl wait` fails on a CRD so new it has no status yet)."""
    deadline = time.monotonic() + timeout
    while True:
        conditions = (json.loads(kubectl("get", "crd", crd, "-o", "json")).get("status") or {}).get("conditions")
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions or ()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {crd} not Established after {timeout} s")
        time.sleep(0.2)


def install(kubectl: Kubectl) -> None:
    """The CRD (crds/, unchanged) and the operator's ServiceAccount + ClusterRole + binding."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    wait_established(kubectl, "wasminferences.kwasi.dev")
    kubectl("apply", "-f", str(RBAC))


def service_account_kubeconfig(kubectl: Kubectl, out: Path, duration: str = "4h", namespace: str = NAMESPACE,
                               service_account: str = SERVICE_ACCOUNT) -> Path:
    """A kubeconfig for the operator's ServiceAccount: a TokenRequest token and the cluster's CA."""
    token = kubectl("-n", namespace, "create", "token", service_account, f"--duration={duration}").strip()
    admin = yaml.safe_load(kubectl.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": service_account, "context": {"cluster": cluster["name"], "user": service_account}}],
        "current-context": service_account,
    }
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out


class OperatorProcess:
    """``kwasi-operator`` as a subprocess with its own kubeconfig; logs go to a file."""

    def __init__(self, kubeconfig: Path, log_path: Path, args: Sequence[str] = ("--all-namespaces",)) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.args = list(args)
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        cmd = [sys.executable, "-m", "kwasi_operator.cli", *self.args,
               "--health-port", str(self.health_port), "--metrics-port", str(self.metrics_port)]
        with self.log_path.open("ab") as log:
            log.write(f"\n# {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"kwasi-operator exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"kwasi-operator /healthz not up after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def restart(self) -> OperatorProcess:
        self.stop()
        return self.start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def peak_rss_bytes(self) -> int:
        """VmHWM: the process's peak resident set size so far."""
        if self.proc is None:
            return 0
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far."""
        if self.proc is None:
            return 0.0
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text: str = r.read().decode()
            return text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])
