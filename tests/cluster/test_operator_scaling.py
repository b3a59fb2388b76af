"""spec.autoscaling with and without KEDA, on the real API server: KEDA's own ScaledObject CRD (from the
kedacore/keda Go module, hack/cluster/extra-crds.sh) validates what the operator renders. No KEDA controller
runs here: what is tested is the object KEDA would act on, and that the operator switches between the HPA
and KEDA paths as KEDA's CRD comes and goes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kwasi_operator_dev.local import OperatorProcess
from kwasi_testing.kube_objects import (
    Obj,
    cond,
    extra_crd,
    get,
    namespace_fixture,
    operator_fixture,
    reasons,
    wait_for,
    wait_ready,
    wasminference,
)

if TYPE_CHECKING:
    from kwasi_testing.cluster import Cluster

PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
SO = "scaledobjects.keda.sh"


operator = operator_fixture("scaling", "--resync-seconds", "600")
ns = namespace_fixture("scale")


def test_keda_scaled_object_follows_the_crd(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    keda = {"serverAddress": PROMETHEUS, "cooldownSeconds": 120}
    auto = {"minReplicas": 0, "maxReplicas": 4, "metric": "queue", "target": 2, "activationTarget": 1, "keda": keda}
    cluster.apply(wasminference("auto", autoscaling=auto), namespace=ns)
    cluster.apply(wasminference("keda", autoscaling={**auto, "engine": "KEDA"}), namespace=ns)

    # No KEDA yet: Auto falls back to the HPA (refused here: scale to zero needs the HPAScaleToZero gate)
    # and engine KEDA says what is missing.
    wait_for(cluster, ns, "wasminference", "keda", lambda wi: cond(wi, "Degraded").get("reason") == "KEDANotInstalled",
             30, "Degraded=KEDANotInstalled")
    wait_for(cluster, ns, "wasminference", "auto",
             lambda wi: cond(wi, "Degraded").get("reason") == "ScaleToZeroUnavailable", 30, "HPA path without KEDA")
    assert get(cluster, ns, "deployment", "keda") is None

    with extra_crd(cluster, "keda"):
        for name in ("auto", "keda"):
            so = wait_for(cluster, ns, SO, name, lambda _: True, 15, f"ScaledObject {name}")
            wi = wait_ready(cluster, ns, name, timeout=30)  # real scale to zero: no feature gate involved
            assert cond(wi, "Degraded")["status"] == "False"
            assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
            assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (0, 4)
            [trigger] = so["spec"]["triggers"]
            assert trigger["type"] == "prometheus" and trigger["metadata"] == {
                "serverAddress": PROMETHEUS, "threshold": "2", "activationThreshold": "1",
                "query": f'sum(kwasi_requests_waiting{{namespace="{ns}",wasminference="{name}"}})'}
            assert get(cluster, ns, "hpa", name) is None  # KEDA makes its own HPA
        assert "Resolved" in reasons(cluster, ns, "keda")

        # Drift on a kind whose CRD appeared while the operator ran: its watch was started then.
        cluster.kubectl("-n", ns, "patch", SO, "auto", "--type=merge", "-p", '{"spec":{"maxReplicaCount":40}}')
        wait_for(cluster, ns, SO, "auto", lambda so: so["spec"]["maxReplicaCount"] == 4, 5, "ScaledObject reverted")

    # KEDA gone (its ScaledObjects with it): back to the HPA path, and KEDANotInstalled again.
    wait_for(cluster, ns, "wasminference", "keda", lambda wi: cond(wi, "Degraded").get("reason") == "KEDANotInstalled",
             30, "KEDANotInstalled after the CRD went")
    wait_for(cluster, ns, "wasminference", "auto",
             lambda wi: cond(wi, "Degraded").get("reason") == "ScaleToZeroUnavailable", 30, "HPA path again")


def test_hpa_engine_and_kv_cache_metric(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    auto = {"minReplicas": 1, "maxReplicas": 3, "metric": "kvCacheUsage", "target": 80, "engine": "HPA",
            "keda": {"serverAddress": PROMETHEUS}}
    with extra_crd(cluster, "keda"):
        cluster.apply(wasminference("kv", autoscaling=auto), namespace=ns)
        wait_ready(cluster, ns, "kv")
        hpa: Obj = get(cluster, ns, "hpa", "kv") or {}
        [metric] = hpa["spec"]["metrics"]
        assert metric["pods"] == {"metric": {"name": "kwasi_kv_cache_usage_ratio"},
                                  "target": {"type": "AverageValue", "averageValue": "800m"}}
        assert get(cluster, ns, SO, "kv") is None  # engine HPA: no ScaledObject even with KEDA installed
