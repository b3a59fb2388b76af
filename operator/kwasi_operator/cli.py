"""``kwasi-operator``: run the WasmInference operator (``kopf run`` underneath, one replica, standalone)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

import kopf

from kwasi_operator import metrics
from kwasi_operator.control.state import Options
from kwasi_operator.handlers import register


def _label(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{value!r}: expected KEY=VALUE")
    return key, val


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kwasi-operator", description=__doc__)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable; globs like 'team-*' need list/watch on namespaces)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch every namespace (the default when no --namespace is given)")
    p.add_argument("--bind-address", default=os.environ.get("KWASI_OPERATOR_BIND", "127.0.0.1"),
                   help="address for /healthz and /metrics (default 127.0.0.1; 0.0.0.0 in a pod)")
    p.add_argument("--health-port", type=int, default=8080, help="liveness endpoint /healthz (0: off)")
    p.add_argument("--metrics-port", type=int, default=8081, help="Prometheus /metrics (0: off)")
    p.add_argument("--resync-seconds", type=float, default=60.0,
                   help="period of the level-based reconcile of every object (repairs drift)")
    p.add_argument("--backoff-seconds", type=float, default=1.0,
                   help="first retry delay for a spec that cannot be realised (doubles up to 60 s)")
    p.add_argument("--max-inflight", type=int, default=32,
                   help="concurrent writes to the API server; Deployments are served first under a burst")
    p.add_argument("--status-delay-seconds", type=float, default=0.5,
                   help="coalescing window for status updates caused by Deployment/pod events")
    p.add_argument("--monitor-label", action="append", default=[], type=_label, metavar="KEY=VALUE",
                   help="label every ServiceMonitor/PodMonitor this operator renders (repeatable; e.g. release=<the "
                        "kube-prometheus-stack release>, which its Prometheus selects on); a spec's own labels win")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kopf.configure(verbose=args.verbose, debug=args.debug, log_format=kopf.LogFormat.FULL)
    logging.getLogger("kwasi_operator").setLevel(logging.DEBUG if args.debug else logging.INFO)
    for noisy in ("aiohttp.access", "kubernetes"):  # one INFO line per request otherwise
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.debug else logging.WARNING)
    if not (args.verbose or args.debug):  # "Handler ... succeeded" for every watch event of every child
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    registry = kopf.OperatorRegistry()
    register(registry, Options(resync_s=args.resync_seconds, backoff_s=args.backoff_seconds,
                               status_delay_s=args.status_delay_seconds, max_inflight=args.max_inflight,
                               namespaces=tuple(args.namespace), monitor_labels=dict(args.monitor_label)))
    metrics.serve(args.metrics_port, args.bind_address)
    liveness = f"http://{args.bind_address}:{args.health_port}/healthz" if args.health_port else None
    kopf.run(
        registry=registry,
        standalone=True,  # one replica (Deployment strategy Recreate): no peering objects, no RBAC for them
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
