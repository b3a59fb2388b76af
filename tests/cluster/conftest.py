"""A real local Kubernetes cluster for tests (hack/cluster/cluster.sh).

The session-scoped ``cluster`` fixture builds the binaries when they are missing (from the Go module
proxy into ``$KWASI_CLUSTER_CACHE``, default ``~/.cache/kwasi-cluster``; a cold build takes a long
time, run ``hack/cluster/cluster.sh build`` ahead) and the images (``make images``, cached), starts
etcd, kube-apiserver (RBAC on), kube-controller-manager, kube-scheduler and the kwok controller on
127.0.0.1 with free ports in a fresh temporary directory, creates the kwok fake nodes (two GPU nodes,
one CPU node), one real node (kubelet + containerd, tainted ``kwasi.dev/real-node`` so that only pods
that ask for it run there) with the images imported, and Prometheus, and stops everything at the end
of the session.  The logs stay in the run directory (printed at teardown).

Environment:
  KWASI_SKIP_CLUSTER=1            skip every test that needs the cluster (the only way to skip them;
                                  a failure to build or start is an error, not a skip)
  KWASI_CLUSTER_USE_EXISTING=DIR  use a cluster already started with
                                  ``KWASI_CLUSTER_DIR=DIR hack/cluster/cluster.sh up`` and leave it
                                  running (fast edit-test loop)
  KWASI_CLUSTER_CACHE             binary cache directory (see cluster.sh)
  KWASI_CLUSTER_REAL_NODE=0       kwok nodes only (no images, no real node, no Prometheus)
  KWASI_KEEP=1                    leave the cluster running after the session, in
                                  $KWASI_CLUSTER_DIR (default build/cluster-demo), to explore it:
                                  eval "$(KWASI_CLUSTER_DIR=... hack/cluster/cluster.sh env)"
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
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


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run_script(args: list[str], env: dict[str, str], timeout: float) -> str:
    return _run(SCRIPT, args, env, timeout)


def _run(script: Path, args: list[str], env: dict[str, str], timeout: float) -> str:
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


def _make_cluster(run_dir: Path, env: dict[str, str]) -> Cluster:
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


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)."""
    if os.environ.get("KWASI_SKIP_CLUSTER", "") not in ("", "0"):
        pytest.skip("KWASI_SKIP_CLUSTER is set: not building/starting the local Kubernetes cluster")

    existing = os.environ.get("KWASI_CLUSTER_USE_EXISTING")
    if existing:
        yield _make_cluster(Path(existing), dict(os.environ))
        return

    env = dict(os.environ)
    if keep():
        run_dir = Path(env.get("KWASI_CLUSTER_DIR") or REPO / "build" / "cluster-demo")
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = tmp_path_factory.mktemp("kwasi-cluster")
        # If this pytest process dies without teardown, the script's watchdog stops the cluster.
        env["KWASI_CLUSTER_WATCH_PID"] = str(os.getpid())
    env["KWASI_CLUSTER_DIR"] = str(run_dir)
    env.update({var: str(port) for var, port in zip(PORT_VARS, _free_ports(len(PORT_VARS)), strict=False)})
    t0 = time.monotonic()
    _run_script(["build"], env, BUILD_TIMEOUT_S)
    if env.get("KWASI_CLUSTER_REAL_NODE", "1") != "0":
        _run(IMAGES, ["build"], env, BUILD_TIMEOUT_S)  # seconds when `make images` ran
    t1 = time.monotonic()
    try:
        _run_script(["up"], env, UP_TIMEOUT_S)
        c = _make_cluster(run_dir, env)
        print(
            f"\nkwasi cluster: build check {t1 - t0:.1f}s, up {time.monotonic() - t1:.1f}s, KUBECONFIG={c.kubeconfig}"
        )
        yield c
    finally:
        if keep():
            print(f"\nKWASI_KEEP=1: the cluster keeps running; explore it with\n"
                  f'  eval "$(KWASI_CLUSTER_DIR={run_dir} {SCRIPT.relative_to(REPO)} env)"\n'
                  f"and stop it with KWASI_CLUSTER_DIR={run_dir} {SCRIPT.relative_to(REPO)} down")
        else:
            try:
                _run_script(["down"], env, 180)
            finally:
                print(f"\nkwasi cluster stopped; logs in {run_dir / 'logs'}")


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


@pytest.fixture(scope="session")
def journey(cluster: Cluster) -> Iterator[Journey]:
    if not cluster.real_node:
        pytest.skip("KWASI_CLUSTER_REAL_NODE=0: the cluster has no real node")
    helm = shutil.which("helm", path=cluster.env["PATH"])
    assert helm, f"helm is not in the cluster's binary cache ({cluster.env.get('KWASI_CLUSTER_BIN')})"
    tag = os.urandom(3).hex()
    system, apps, bad = (cluster.create_namespace(f"{p}-{tag}") for p in ("kwasi-system", "journey", "bad-paths"))
    # Its own release name: the chart's ClusterRoles are cluster-wide and named after the release.
    j = Journey(cluster, system, apps, bad, release=f"kwasi-{tag}", helm=helm)
    t0 = time.monotonic()
    try:
        j.run_helm("install", j.release, str(CHART), "-n", system, "-f", str(LOCAL_VALUES),
                   "--set", f"watchNamespaces={{{apps},{bad}}}", "--set", "operator.resyncSeconds=10",
                   "--wait", "--timeout", "180s")
        print(f"\nhelm install: operator running in {time.monotonic() - t0:.1f}s (namespace {system})")
        yield j
    finally:
        if keep():  # something to explore: the CPU sample serving again
            sample = REPO / "operator" / "deploy" / "samples" / "smollm2-cpu.yaml"
            cluster.kubectl("-n", apps, "apply", "-f", str(sample), check=False)
            print(f"\nKWASI_KEEP=1: {sample.relative_to(REPO)} applied again in namespace {apps}; the operator runs in "
                  f"{system} (helm release {j.release})")
        else:
            j.run_helm("uninstall", j.release, "-n", system, "--wait", "--timeout", "120s")
            for ns in (apps, bad, system):
                cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
