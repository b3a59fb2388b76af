"""kwasi-operator under load: create N WasmInference objects at once on the local control plane.

Measures, with the operator running as a subprocess under its own ServiceAccount's RBAC:
  - time from the first create until every object reports Ready=True,
  - create -> Deployment latency (create call returned -> Deployment seen by a watch), p50 / p99,
  - the operator's peak RSS (VmHWM).
Targets on the 2-core dev machine: 200 Ready within 60 s, create->Deployment p50 within 1.2x the peer's
(measured in the same run), RSS <= 200 MB.

The peer, measured on the same cluster with the same burst, alternating with ours for --rounds rounds:
bench/bare_controller.py, which only applies each Deployment; its latency is what the cluster and the
machine leave for any controller. The ratio reported is the median of the rounds' ratios.

  python bench/operator.py                    # starts a throw-away cluster (hack/cluster/cluster.sh)
  python bench/operator.py --kubeconfig FILE  # uses a running cluster (admin kubeconfig)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config
from kubernetes.aio import watch as k8s_watch
from kubernetes.aio.client.exceptions import ApiException

BENCH = Path(__file__).resolve().parent
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kwasi_operator import kinds  # noqa: E402
from kwasi_operator_dev.local import Kubectl, OperatorProcess, install, service_account_kubeconfig  # noqa: E402
from kwasi_testing.net import free_ports  # noqa: E402

CLUSTER = REPO / "hack" / "cluster" / "cluster.sh"
TARGET_READY_S = 60.0
TARGET_P50_RATIO = 1.2  # ours / the bare controller's, same cluster, same burst
TARGET_RSS_MB = 200.0
PORT_VARS = ("ETCD_PORT", "ETCD_PEER_PORT", "APISERVER_PORT", "KCM_PORT", "SCHEDULER_PORT", "KWOK_PORT")


def manifest(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "kwasi.dev/v1alpha1", "kind": "WasmInference",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "module": {"image": "registry.invalid/kwasi/bench:1"},
            "models": [{"name": "default", "encoding": "ggml", "target": "auto",
                        "source": {"url": "https://models.invalid/m.gguf", "sha256": "a" * 64}}],
            # CPU pods allowed on the GPU nodes too: 3 kwok nodes x 110 pods hold 200 replicas.
            "scheduling": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        },
    }


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


WI = kinds.WASM_INFERENCE


async def api_client(kubeconfig: Path) -> k8s.ApiClient:
    config = k8s.Configuration()
    await k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=config)  # type: ignore[no-untyped-call]
    config.client_session_kwargs = {"trust_env": False}
    return k8s.ApiClient(config)


async def watch(kubeconfig: Path, ns: str) -> None:
    """The watcher process: one line per first sighting, ``<what> <name> <time.monotonic()>``.

    It runs apart from the process that creates the objects, with plain-dict watches (the custom-objects API
    also serves built-in groups), so that neither the creates nor parsing hundreds of status events delay
    the moment a Deployment is seen.
    """
    custom = k8s.CustomObjectsApi(await api_client(kubeconfig))
    seen: set[tuple[str, str]] = set()

    def mark(what: str, name: str) -> None:
        if (what, name) not in seen:
            seen.add((what, name))
            print(what, name, time.monotonic(), flush=True)

    async def deployments() -> None:
        async for event in k8s_watch.Watch().stream(custom.list_namespaced_custom_object,  # type: ignore[no-untyped-call]
                                                    "apps", "v1", ns, "deployments"):
            dep = event["raw_object"]
            name = dep["metadata"]["name"]
            mark("deployment", name)
            if (dep.get("status") or {}).get("readyReplicas", 0) >= 1:
                mark("deployment-ready", name)

    async def objects() -> None:
        async for event in k8s_watch.Watch().stream(custom.list_namespaced_custom_object,  # type: ignore[no-untyped-call]
                                                    WI.group, WI.version, ns, WI.plural):
            wi = event["raw_object"]
            conds = (wi.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                mark("ready", wi["metadata"]["name"])

    tasks = [asyncio.create_task(deployments()), asyncio.create_task(objects())]
    await asyncio.sleep(1.0)  # the watches are open by now
    print("watching", "-", time.monotonic(), flush=True)
    await asyncio.gather(*tasks)


class Watcher:
    """``bench/operator.py --watch NS`` as a subprocess; its lines are collected by a thread."""

    def __init__(self, kubeconfig: Path, ns: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--watch", ns, "--kubeconfig", str(kubeconfig)],
                                     stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        self.seen: dict[str, dict[str, float]] = {}
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            what, name, t = line.split()
            self.seen.setdefault(what, {})[name] = float(t)
            if what == "watching":
                self.ready.set()

    def times(self, what: str) -> dict[str, float]:
        return dict(self.seen.get(what, {}))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class BareController:
    """bench/bare_controller.py as a subprocess with the operator's kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(BENCH / "bare_controller.py")], stdout=subprocess.PIPE,
                                     text=True, stdin=subprocess.DEVNULL, env={**os.environ,
                                                                               "KUBECONFIG": str(kubeconfig)})
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "watching":
            raise RuntimeError("bench/bare_controller.py did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def burst(kubeconfig: Path, n: int, concurrency: int, until: str, timeout: float,
                timeline: Path) -> dict[str, float]:
    """Create ``n`` objects in a fresh namespace, wait until each has a Deployment (``until="deployment"``)
    or reports Ready, then delete the namespace and wait until it is gone."""
    api = await api_client(kubeconfig)
    core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    await core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))
    names = [f"wi-{i:04d}" for i in range(n)]
    created: dict[str, float] = {}
    watcher = Watcher(kubeconfig, ns)
    if not watcher.ready.wait(30):
        raise RuntimeError("the watcher process did not start")
    sem = asyncio.Semaphore(concurrency)

    async def create(name: str) -> None:
        async with sem:
            await custom.create_namespaced_custom_object(WI.group, WI.version, ns, WI.plural, manifest(name, ns))
            created[name] = time.monotonic()

    t0 = time.monotonic()
    await asyncio.gather(*(create(name) for name in names))
    t_created = time.monotonic() - t0
    while len(watcher.times(until)) < n and time.monotonic() < t0 + timeout:
        await asyncio.sleep(0.1)
    watcher.stop()
    ready, deployed, dep_ready = watcher.times("ready"), watcher.times("deployment"), watcher.times("deployment-ready")
    timeline.write_text(json.dumps({"t0": t0, "created": created, "deployed": deployed, "ready": ready}))
    latencies = [max(0.0, deployed[name] - created[name]) for name in names if name in deployed]
    ready_after = sorted(t - t0 for t in ready.values()) or [float("inf")]
    await core.delete_namespace(ns)
    for _ in range(480):  # leave a clean cluster for the next burst
        try:
            await core.read_namespace(ns)
        except ApiException:
            break
        await asyncio.sleep(0.5)
    await api.close()  # type: ignore[no-untyped-call]
    return {
        "n": n, "created_s": t_created, "ready": len(ready),
        "all_ready_s": (max(ready.values()) - t0) if len(ready) == n else float("inf"),
        "deployments": len(latencies),
        "p50_s": statistics.median(latencies) if latencies else float("inf"),
        "p99_s": percentile(latencies, 0.99) if latencies else float("inf"),
        "max_s": max(latencies) if latencies else float("inf"),
        "first_ready_s": ready_after[0], "p50_ready_s": statistics.median(ready_after),
        "p50_dep_ready_s": statistics.median([t - t0 for t in dep_ready.values()] or [float("inf")]),
        "status_lag_p50_s": statistics.median([ready[k] - dep_ready[k] for k in ready if k in dep_ready] or [0.0]),
    }


def start_cluster(run_dir: Path) -> tuple[Path, dict[str, str]]:
    # kwok nodes only: the real node (image import, Prometheus) would add minutes and nothing to measure.
    env = dict(os.environ, KWASI_CLUSTER_DIR=str(run_dir), KWASI_CLUSTER_WATCH_PID=str(os.getpid()),
               KWASI_CLUSTER_REAL_NODE="0")
    env.update({f"KWASI_CLUSTER_{v}": str(p) for v, p in zip(PORT_VARS, free_ports(len(PORT_VARS)), strict=True)})
    subprocess.run([str(CLUSTER), "up"], env=env, check=True, stdin=subprocess.DEVNULL)
    return run_dir / "kubeconfig", env


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--count", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=50, help="create calls in flight")
    p.add_argument("--rounds", type=int, default=3,
                   help="peer burst, then ours, this many times (the ratio is the median of the rounds')")
    p.add_argument("--kubeconfig", type=Path, help="admin kubeconfig of a running cluster (default: start one)")
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--operator-args", default="", help="extra kwasi-operator flags, e.g. '--max-inflight 8'")
    p.add_argument("--watch", metavar="NS", help=argparse.SUPPRESS)  # the watcher subprocess
    args = p.parse_args()
    if args.watch:
        asyncio.run(watch(args.kubeconfig, args.watch))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="kwasi-bench-operator-"))
    cluster_env: dict[str, str] | None = None
    kubeconfig = args.kubeconfig
    if kubeconfig is None:
        kubeconfig, cluster_env = start_cluster(tmp / "cluster")
    paths = subprocess.run([str(CLUSTER), "paths"], capture_output=True, text=True, check=True).stdout.split()
    kubectl_bin = next((b for b in paths if b.endswith("/kubectl") and Path(b).exists()), shutil.which("kubectl"))
    kubectl = Kubectl(kubeconfig, kubectl_bin)
    install(kubectl)
    sa_kubeconfig = service_account_kubeconfig(kubectl, tmp / "operator.kubeconfig")
    rounds: list[tuple[dict[str, float], dict[str, float], float, float]] = []  # peer, ours, RSS, CPU
    try:
        # Alternating, one controller at a time (both would act on every object): a load that drifts over
        # the run (a shared machine) falls on both, and the median ratio is robust to one bad round.
        for i in range(args.rounds):
            peer = BareController(sa_kubeconfig)
            try:
                b = asyncio.run(burst(kubeconfig, args.count, args.concurrency, "deployment", 60,
                                      tmp / f"peer-{i}.json"))
            finally:
                peer.stop()
            op = OperatorProcess(sa_kubeconfig, tmp / "operator.log", ["--all-namespaces", *args.operator_args.split()])
            try:
                op.start()
                r = asyncio.run(burst(kubeconfig, args.count, args.concurrency, "ready", args.timeout,
                                      tmp / f"ours-{i}.json"))
                rounds.append((b, r, float(op.peak_rss_bytes()), op.cpu_seconds()))
                (tmp / f"metrics-{i}.txt").write_text(op.metrics())
            finally:
                op.stop()
            print(f"round {i + 1}: peer p50 {b['p50_s'] * 1000:.0f} ms, ours {r['p50_s'] * 1000:.0f} ms "
                  f"({r['p50_s'] / b['p50_s']:.2f}x), all Ready {r['all_ready_s']:.1f} s", flush=True)
    finally:
        if cluster_env is not None:
            subprocess.run([str(CLUSTER), "down"], env=cluster_env, check=False, stdin=subprocess.DEVNULL)
    return report(rounds, args.concurrency, tmp)


def report(rounds: list[tuple[dict[str, float], dict[str, float], float, float]], concurrency: int,
           tmp: Path) -> int:
    ratios = [r["p50_s"] / b["p50_s"] for b, r, _, _ in rounds]
    ratio = statistics.median(ratios)
    b, r, _, cpu = rounds[ratios.index(sorted(ratios)[len(ratios) // 2])]  # the median round
    worst_ready = max(rr["all_ready_s"] for _, rr, _, _ in rounds)
    ok_ready = all(rr["ready"] == rr["n"] for _, rr, _, _ in rounds) and worst_ready <= TARGET_READY_S
    ok_p50 = ratio <= TARGET_P50_RATIO
    peak_rss = max(x for _, _, x, _ in rounds)
    ok_rss = peak_rss / 2**20 <= TARGET_RSS_MB
    print(f"objects                    {r['n']:.0f} per burst, {len(rounds)} rounds (created in {r['created_s']:.2f} s,"
          f" {concurrency} in flight; peer's burst {b['created_s']:.2f} s)")
    print(f"all Ready after            {r['all_ready_s']:.2f} s ({r['ready']:.0f}/{r['n']:.0f}); worst round "
          f"{worst_ready:.2f} s   target <= {TARGET_READY_S:g} s: {'PASS' if ok_ready else 'FAIL'}")
    print(f"  first / median Ready     {r['first_ready_s']:.2f} s / {r['p50_ready_s']:.2f} s"
          f" (Deployments ready: median {r['p50_dep_ready_s']:.2f} s; status lag p50 {r['status_lag_p50_s']:.2f} s)")
    print(f"create->Deployment p50     {r['p50_s'] * 1000:.0f} ms = {ratio:.2f}x the peer's (median of "
          f"{', '.join(f'{x:.2f}' for x in ratios)})   target <= {TARGET_P50_RATIO:g}x: {'PASS' if ok_p50 else 'FAIL'}")
    print(f"create->Deployment p99     {r['p99_s'] * 1000:.0f} ms (max {r['max_s'] * 1000:.0f} ms,"
          f" {r['deployments']:.0f} Deployments)")
    print(f"  peer: bare controller    p50 {b['p50_s'] * 1000:.0f} ms, p99 {b['p99_s'] * 1000:.0f} ms"
          f" ({b['deployments']:.0f} Deployments); p99 ratio {r['p99_s'] / b['p99_s']:.2f}x")
    print(f"operator peak RSS          {peak_rss / 2**20:.0f} MB   target <= {TARGET_RSS_MB:g} MB: "
          f"{'PASS' if ok_rss else 'FAIL'}")
    print(f"operator CPU time          {cpu:.1f} s (user+system, the median round)")
    print(f"logs and timelines         {tmp}")
    return 0 if ok_ready and ok_p50 and ok_rss else 1


if __name__ == "__main__":
    sys.exit(main())
