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

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kwasi_testing import REPO
from kwasi_testing.cluster import (
    BUILD_TIMEOUT_S,
    CHART,
    IMAGES,
    LOCAL_VALUES,
    PORT_VARS,
    SCRIPT,
    UP_TIMEOUT_S,
    Cluster,
    Journey,
    keep,
    make_cluster,
    run,
    run_script,
)
from kwasi_testing.net import free_ports


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)."""
    if os.environ.get("KWASI_SKIP_CLUSTER", "") not in ("", "0"):
        pytest.skip("KWASI_SKIP_CLUSTER is set: not building/starting the local Kubernetes cluster")

    existing = os.environ.get("KWASI_CLUSTER_USE_EXISTING")
    if existing:
        yield make_cluster(Path(existing), dict(os.environ))
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
    env.update({var: str(port) for var, port in zip(PORT_VARS, free_ports(len(PORT_VARS)), strict=False)})
    t0 = time.monotonic()
    run_script(["build"], env, BUILD_TIMEOUT_S)
    if env.get("KWASI_CLUSTER_REAL_NODE", "1") != "0":
        run(IMAGES, ["build"], env, BUILD_TIMEOUT_S)  # seconds when `make images` ran
    t1 = time.monotonic()
    try:
        run_script(["up"], env, UP_TIMEOUT_S)
        c = make_cluster(run_dir, env)
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
                run_script(["down"], env, 180)
            finally:
                print(f"\nkwasi cluster stopped; logs in {run_dir / 'logs'}")


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
