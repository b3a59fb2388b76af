"""``make cluster-demo``: a local control plane, the operator under its own RBAC, sample WasmInferences,
and ``kubectl get wasminference`` printed live for a bounded time; everything is stopped at the end.

  python -m kwasi_operator_dev.demo [--seconds 40] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from kwasi_operator_dev.local import REPO, Kubectl, OperatorProcess, free_port, install, service_account_kubeconfig

CLUSTER = REPO / "hack" / "cluster" / "cluster.sh"
SAMPLES = REPO / "operator" / "deploy" / "samples" / "smollm2-gpu.yaml"
PORT_VARS = ("ETCD_PORT", "ETCD_PEER_PORT", "APISERVER_PORT", "KCM_PORT", "SCHEDULER_PORT", "KWOK_PORT")


def say(msg: str) -> None:
    print(f"\n\033[1m== {msg}\033[0m", flush=True)


def watch(kubectl: Kubectl, seconds: float, until: str | None = None) -> None:
    """Print ``kubectl get wasminference`` whenever it changes, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    last = ""
    while time.monotonic() < deadline:
        out = kubectl("get", "wasminference", "-o", "wide", check=False)
        state = re.sub(r"\s+\S+$", "", out, flags=re.M)  # without AGE, which changes every second
        if state != last:
            print(time.strftime("%H:%M:%S"), "\n" + out, end="", flush=True)
            last = state
        if until and until in out:
            return
        time.sleep(1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=40, help="total time to watch (bounded)")
    p.add_argument("--run-dir", type=Path, default=REPO / "build" / "cluster-demo")
    p.add_argument("--keep", action="store_true", help="leave the cluster and operator running")
    args = p.parse_args()

    env = dict(os.environ, KWASI_CLUSTER_DIR=str(args.run_dir), KWASI_CLUSTER_REAL_NODE="0")  # kwok nodes only
    env.update({f"KWASI_CLUSTER_{v}": str(free_port()) for v in PORT_VARS})
    if not args.keep:
        env["KWASI_CLUSTER_WATCH_PID"] = str(os.getpid())
    say("starting the local control plane (kube-apiserver, controller-manager, scheduler, etcd, kwok)")
    subprocess.run([str(CLUSTER), "up"], env=env, check=True, stdin=subprocess.DEVNULL)
    kubeconfig = args.run_dir / "kubeconfig"
    info = dict(line.split("=", 1) for line in (args.run_dir / "cluster.env").read_text().splitlines() if "=" in line)
    bin_dir = info["KWASI_CLUSTER_BIN"].split(":")[0]
    kubectl = Kubectl(kubeconfig, str(Path(bin_dir) / "kubectl"))
    op: OperatorProcess | None = None
    try:
        print(kubectl("get", "nodes", "-L", "nvidia.com/gpu.product,nvidia.com/gpu.count"))
        say("installing the CRD (crds/) and the operator's RBAC; running kwasi-operator as its ServiceAccount")
        install(kubectl)
        op = OperatorProcess(service_account_kubeconfig(kubectl, args.run_dir / "operator.kubeconfig"),
                             args.run_dir / "operator.log", ["--all-namespaces", "--resync-seconds", "10"]).start()
        print(f"operator pid {op.pid}; /healthz :{op.health_port}, /metrics :{op.metrics_port}; log {op.log_path}")
        say(f"kubectl apply -f {SAMPLES.relative_to(REPO)}")
        print(kubectl("apply", "-f", str(SAMPLES)), end="")
        t0 = time.monotonic()
        watch(kubectl, args.seconds / 2)
        say("kubectl scale wasminference chat --replicas=3")
        print(kubectl("scale", "wasminference", "chat", "--replicas=3"), end="")
        watch(kubectl, max(5.0, args.seconds - (time.monotonic() - t0)))
        say("pods and where the scheduler put them; conditions of too-big")
        print(kubectl("get", "pods", "-o", "wide"))
        print(kubectl("get", "wasminference", "too-big", "-o",
                      "jsonpath={range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{\"\\n\"}{end}"))
        say("events on the WasmInference objects")
        print(kubectl("get", "events", "--field-selector", "involvedObject.kind=WasmInference"))
    finally:
        if args.keep:
            print(f"\nleft running: export KUBECONFIG={kubeconfig}; operator pid {op.pid if op else '-'}")
        else:
            if op is not None:
                op.stop()
            subprocess.run([str(CLUSTER), "down"], env=env, check=False, stdin=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
