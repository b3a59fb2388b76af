"""Every panel of the Operator dashboard returns data from a real Prometheus scraping a real kwasi-operator
that reconciles WasmInferences on the local control plane: ready ones, one that cannot be realised (errors and
retries), and a deleted child (a repair)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from kwasi_dashboards import catalog
from kwasi_dashboards.boards import operator as operator_board
from kwasi_dashboards.evaluate import Choice, Prometheus, Window, evaluate
from kwasi_operator_dev.local import Kubectl, OperatorProcess, install, service_account_kubeconfig
from kwasi_testing.kube_objects import get, wait_ready, wasminference
from kwasi_testing.prometheus import PrometheusServer, Target, binaries

if TYPE_CHECKING:
    from kwasi_testing.cluster import Cluster

SCRAPE_S = 1.0
# What a ServiceMonitor with honorLabels gives the operator's series in a cluster.
OPERATOR_LABELS = {"namespace": "kwasi-system", "pod": "kwasi-operator-0"}


@dataclass
class Scraped:
    prom: Prometheus
    window: Window
    namespace: str


@pytest.fixture(scope="module")
def scraped(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    bins = binaries()
    tmp = tmp_path_factory.mktemp("operator-dashboard")
    kubectl = Kubectl(cluster.kubeconfig, cluster.kubectl_path, cluster.env)
    install(kubectl)
    op = OperatorProcess(service_account_kubeconfig(kubectl, tmp / "operator.kubeconfig"), tmp / "operator.log",
                         ["--all-namespaces", "--resync-seconds", "1", "--backoff-seconds", "0.5"]).start()
    ns = cluster.create_namespace(f"dash-{uuid.uuid4().hex[:6]}")
    server = None
    try:
        server = PrometheusServer(bins.prometheus, [Target("kwasi-operator", f"127.0.0.1:{op.metrics_port}",
                                                           OPERATOR_LABELS, honor_labels=True)], scrape_s=SCRAPE_S)
        server.targets_up(1)
        start = time.time() - SCRAPE_S
        cluster.apply(wasminference("chat", replicas=2), namespace=ns)
        cluster.apply(wasminference("embed"), namespace=ns)
        # A module ConfigMap that does not exist: reported, retried with backoff (errors by reason).
        cluster.apply(wasminference("broken", module={"configMap": {"name": "missing", "key": "app.wasm"}}),
                      namespace=ns)
        wait_ready(cluster, ns, "chat", timeout=90)
        wait_ready(cluster, ns, "embed", timeout=90)
        for _ in range(2):  # a child deleted behind the operator's back, twice: repaired each time
            cluster.kubectl("-n", ns, "delete", "service", "chat")
            cluster.wait_until(lambda: get(cluster, ns, "service", "chat"), 30, "Service chat re-created")
            time.sleep(4 * SCRAPE_S)
        server.wait_scrapes(3)
        yield Scraped(Prometheus(server.url), Window(start, time.time(), SCRAPE_S), ns)
    finally:
        if server is not None:
            server.stop()
        op.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        print(f"\nkwasi-operator log: {op.log_path}")


@pytest.mark.parametrize("choice", ["all", "first"])
def test_every_operator_panel_has_data(scraped: Scraped, choice: Choice) -> None:
    board = json.loads(catalog.path(operator_board.UID).read_text())
    results = evaluate(board, scraped.prom, scraped.window, choice)
    assert results
    empty = [r for r in results if not r.has_data]
    assert not empty, f"{len(empty)} of {len(results)} queries without data:\n" + "\n".join(map(str, empty))


def test_replicas_per_object_are_what_the_status_reports(scraped: Scraped) -> None:
    result = scraped.prom.query(f'kwasi_operator_wasminference_replicas{{namespace="{scraped.namespace}"}}',
                                scraped.window.end)
    seen = {(s["metric"]["wasminference"], s["metric"]["state"]): float(s["value"][1]) for s in result}
    assert seen[("chat", "desired")] == seen[("chat", "ready")] == 2
    assert seen[("embed", "ready")] == 1
    assert (seen[("broken", "desired")], seen[("broken", "ready")]) == (1, 0)  # what KwasiPodsNotReady sees
    repairs = scraped.prom.query('sum(increase(kwasi_operator_repairs_total{kind="Service"}[5m]))',
                                 scraped.window.end)
    assert float(repairs[0]["value"][1]) >= 1
