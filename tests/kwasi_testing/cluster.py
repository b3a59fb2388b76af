"""The local Kubernetes cluster as tests see it (hack/cluster/cluster.sh): the `Cluster` handle, starting and
stopping it, and the `Journey` (the operator installed with helm). The fixtures are in tests/cluster/conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kwasi_testing import REPO

SCRIPT = REPO / "hack" / "cluster" / "cluster.sh"
IMAGES = REPO / "hack" / "cluster" / "images.sh"
PORT_VARS = (
    "KWASI_CLUSTER_ETCD_PORT",
    "KWASI_CLUSTER_ETCD_PEER_PORT",
    "KWASI_CLUSTER_APISERVER_PORT",
    "KWASI_CLUSTER_KCM_PORT",
    "KWASI_CLUSTER_SCHEDULER_PORT",
    "KWASI_CLUSTER_KWOK_PORT",
    "KWASI_CLUSTER_KUBELET_HEALTHZ_PORT",
    "KWASI_CLUSTER_PROMETHEUS_PORT",
)
# Generous: a cold build of kube-apiserver & co. on 2 cores is tens of minutes.
BUILD_TIMEOUT_S = float(os.environ.get("KWASI_CLUSTER_BUILD_TIMEOUT", "5400"))
UP_TIMEOUT_S = float(os.environ.get("KWASI_CLUSTER_UP_TIMEOUT", "600"))

T = TypeVar("T")


class ClusterError(RuntimeError):
    pass


@dataclass
class Cluster:
    """Handle on a running local control plane."""

    run_dir: Path
    kubeconfig: Path
    server: str
    env: dict[str, str] = field(repr=False)
    kubectl_path: str = "kubectl"
    info: dict[str, str] = field(default_factory=dict, repr=False)  # cluster.env

    @property
    def real_node(self) -> str | None:
        """The kubelet node's name (None with KWASI_CLUSTER_REAL_NODE=0)."""
        return self.info.get("KWASI_CLUSTER_NODE")

    @property
    def node_ip(self) -> str:
        """The real node's address on its bridge: pods reach this host there (and only there)."""
        return self.info["KWASI_CLUSTER_NODE_IP"]

    @property
    def prometheus_url(self) -> str:
        return self.info["KWASI_PROMETHEUS_URL"]

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (the self-built one) against this cluster as the admin user."""
        cmd = [self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(
            cmd,
            check=False,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def get_json(self, *args: str) -> Any:
        """``kubectl get ARGS -o json`` parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifest: str | dict[str, Any], namespace: str | None = None) -> str:
        """``kubectl apply -f -`` with a YAML/JSON string or a dict."""
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("apply", *ns, "-f", "-", input=text).stdout

    def create_namespace(self, name: str, timeout: float = 60) -> str:
        """Create a namespace and wait until its default ServiceAccount exists (pods need it)."""
        self.kubectl("create", "namespace", name)
        wait_until(
            lambda: self.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode == 0,
            timeout,
            f"ServiceAccount {name}/default",
        )
        return name

    @staticmethod
    def wait_until(fn: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
        return wait_until(fn, timeout, what, interval)

    def log_tail(self, component: str, lines: int = 40) -> str:
        path = self.run_dir / "logs" / f"{component}.log"
        if not path.exists():
            return f"(no {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until(fn: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll ``fn`` until it returns something truthy; return it, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = fn()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
        last = fn()
    return last


def run_script(args: list[str], env: dict[str, str], timeout: float) -> str:
    return run(SCRIPT, args, env, timeout)


def run(script: Path, args: list[str], env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        [str(script), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise ClusterError(
            f"{script.relative_to(REPO)} {' '.join(args)} failed with exit code "
            f"{proc.returncode}:\n{proc.stderr[-8000:]}{proc.stdout[-2000:]}"
        )
    return proc.stdout + proc.stderr


def _read_env(run_dir: Path) -> dict[str, str]:
    env_file = run_dir / "cluster.env"
    if not env_file.exists():
        raise ClusterError(f"{env_file} missing: is the cluster in {run_dir} up?")
    out = {}
    for line in env_file.read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def make_cluster(run_dir: Path, env: dict[str, str]) -> Cluster:
    info = _read_env(run_dir)
    bin_path = info["KWASI_CLUSTER_BIN"]
    full_env = {**env, **info, "PATH": f"{bin_path}:{env.get('PATH', '')}"}
    kubectl = str(Path(bin_path.split(":")[0]) / "kubectl")
    return Cluster(
        run_dir=run_dir,
        kubeconfig=Path(info["KUBECONFIG"]),
        server=info["KWASI_CLUSTER_APISERVER"],
        env=full_env,
        kubectl_path=kubectl,
        info=info,
    )


def keep() -> bool:
    return os.environ.get("KWASI_KEEP", "") not in ("", "0")


@dataclass
class Journey:
    """The operator as users install it: `helm install` of the chart with the image `make images` built,
    running as a pod on the real node, watching two namespaces the tests use (`apps`, `bad`)."""

    cluster: Cluster
    system: str
    apps: str
    bad: str
    release: str
    helm: str

    def run_helm(self, *args: str, timeout: float = 240) -> str:
        proc = subprocess.run([self.helm, "--kubeconfig", str(self.cluster.kubeconfig), *args], capture_output=True,
                              text=True, timeout=timeout, check=False, env=self.cluster.env)
        if proc.returncode != 0:
            raise ClusterError(f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
        return proc.stdout


CHART = REPO / "charts" / "kwasi-operator"
LOCAL_VALUES = REPO / "hack" / "cluster" / "operator-values.yaml"


