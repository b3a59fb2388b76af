"""The chart's monitoring parts: dashboard ConfigMaps with intact JSON and labels, the operator's
ServiceMonitor, and the PrometheusRule, whose every alert has promtool unit tests (fires, and stays quiet)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kwasi_dashboards import catalog
from kwasi_testing.prometheus import binaries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kwasi-operator"
CLUSTER = REPO / "hack" / "cluster" / "cluster.sh"
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule")
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> str:
    subprocess.run([str(CLUSTER), "build", "helm"], check=True, timeout=3600, stdin=subprocess.DEVNULL)
    paths = subprocess.run([str(CLUSTER), "paths"], check=True, capture_output=True, text=True).stdout.split()
    return next(p for p in paths if p.endswith("/helm"))


def render(helm: str, *args: str, crds: bool = True) -> list[Obj]:
    apis = [a for api in MONITORING_APIS for a in ("--api-versions", api)] if crds else []
    proc = subprocess.run([helm, "template", "kwasi", str(CHART), "--namespace", "kwasi-system", *apis, *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def of_kind(docs: list[Obj], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def dashboard_maps(docs: list[Obj]) -> list[Obj]:
    return [d for d in of_kind(docs, "ConfigMap") if "-dashboard-" in d["metadata"]["name"]]


def test_one_configmap_per_dashboard_with_intact_json_and_sidecar_labels(helm: str) -> None:
    maps = dashboard_maps(render(helm))
    shipped = {}
    for cm in maps:
        assert cm["metadata"]["namespace"] == "kwasi-system"
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "kwasi"}
        [(key, text)] = cm["data"].items()
        shipped[key] = json.loads(text)
    assert shipped == {f"{uid}.json": json.loads(catalog.path(uid).read_text()) for uid in catalog.DASHBOARDS}


def test_dashboard_values(helm: str) -> None:
    docs = render(helm, "--set", "dashboards.namespace=monitoring", "--set", "dashboards.labels.grafana_dashboard=yes",
                  "--set", "dashboards.annotations.grafana_folder=LLM", "--set", "dashboards.annotations.team=ml")
    maps = dashboard_maps(docs)
    assert len(maps) == len(catalog.DASHBOARDS)
    for cm in maps:
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "yes"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "LLM", "team": "ml"}
    assert dashboard_maps(render(helm, "--set", "dashboards.enabled=false")) == []


def test_monitoring_labels_reach_every_monitoring_object(helm: str) -> None:
    docs = render(helm, "--set", "monitoring.labels.release=kps", "--set", "serviceMonitor.interval=15s",
                  "--set", "serviceMonitor.labels.extra=sm")
    [monitor] = of_kind(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps" and monitor["metadata"]["labels"]["extra"] == "sm"
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s", "honorLabels": True}
    [service] = [d for d in of_kind(docs, "Service") if d["metadata"]["name"].endswith("-metrics")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [rule] = of_kind(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    [deployment] = of_kind(docs, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--monitor-label=release=kps" in args  # the operator puts it on every runtime monitor


def test_monitoring_objects_only_where_their_crds_exist(helm: str) -> None:
    docs = render(helm, crds=False)
    assert of_kind(docs, "ServiceMonitor") == [] and of_kind(docs, "PrometheusRule") == []
    assert len(dashboard_maps(docs)) == len(catalog.DASHBOARDS)  # plain ConfigMaps need no CRD


def rules(helm: str, *args: str) -> Obj:
    [rule] = of_kind(render(helm, *args), "PrometheusRule")
    spec: Obj = rule["spec"]
    return spec


def test_thresholds_come_from_values(helm: str) -> None:
    spec = rules(helm, "--set", "prometheusRule.alerts.ttftP95.seconds=5", "--set", "prometheusRule.window=10m",
                 "--set", "prometheusRule.alerts.stalls.enabled=false")
    alerts = {r["alert"]: r for g in spec["groups"] for r in g["rules"]}
    assert alerts["KwasiTimeToFirstTokenHigh"]["expr"].endswith(") > 5")
    assert "[10m]" in alerts["KwasiServerErrorRatioHigh"]["expr"]
    assert "KwasiStreamsStall" not in alerts


def series(name: str, values: str, **labels: str) -> Obj:
    body = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


POD = {"namespace": "ml", "wasminference": "chat", "pod": "chat-0", "model": "default", "module": "openai_chat"}
OBJ = {"namespace": "ml", "wasminference": "chat"}


def alert(name: str, at: str, fired: list[tuple[dict[str, str], dict[str, str]]], *inputs: Obj) -> Obj:
    return {"interval": "1m", "input_series": list(inputs), "alert_rule_test": [{
        "eval_time": at, "alertname": name,
        "exp_alerts": [{"exp_labels": labels, "exp_annotations": notes} for labels, notes in fired]}]}


def bucket(name: str, le: str, values: str) -> Obj:
    return series(f"{name}_bucket", values, **POD, le=le)


def requests(status: str, values: str) -> Obj:
    return series("kwasi_requests_total", values, **POD, status=status, finish_reason="stop")


def unit_tests() -> list[Obj]:
    ttft, stall = "kwasi_time_to_first_token_seconds", "kwasi_stream_max_stall_seconds"
    return [
        # TTFT p95 between the 2 s and 5 s boundaries (4.85 s): fires after 10 minutes; fast requests do not.
        alert("KwasiTimeToFirstTokenHigh", "20m", [(
            {**OBJ, "alertname": "KwasiTimeToFirstTokenHigh", "severity": "warning"},
            {"summary": "ml/chat: TTFT p95 4.85s",
             "description": "The 95th percentile time to first token stayed above the 2s SLO for 10m "
                            "(kwasi_time_to_first_token_seconds)."})],
              bucket(ttft, "2.0", "0+0x30"), bucket(ttft, "5.0", "0+10x30"), bucket(ttft, "+Inf", "0+10x30")),
        alert("KwasiTimeToFirstTokenHigh", "20m", [],
              bucket(ttft, "1.0", "0+10x30"), bucket(ttft, "2.0", "0+10x30"), bucket(ttft, "+Inf", "0+10x30")),
        alert("KwasiServerErrorRatioHigh", "15m", [(
            {**OBJ, "alertname": "KwasiServerErrorRatioHigh", "severity": "critical"},
            {"summary": "ml/chat: 10% of requests fail with 5xx",
             "description": "More than 5% of requests were answered with a 5xx status for 5m "
                            "(kwasi_requests_total)."})],
              requests("500", "0+1x30"), requests("200", "0+9x30")),
        alert("KwasiServerErrorRatioHigh", "15m", [], requests("500", "0+0x30"), requests("200", "0+9x30")),
        alert("KwasiQueueSaturated", "20m", [(
            {**OBJ, "alertname": "KwasiQueueSaturated", "severity": "warning"},
            {"summary": "ml/chat: 11 requests waiting per pod",
             "description": "More than 8 requests per pod waited for a guest slot for 10m: add replicas or "
                            "--max-concurrency (kwasi_requests_waiting)."})],
              series("kwasi_requests_waiting", "10x30", **POD),
              series("kwasi_requests_waiting", "12x30", **{**POD, "pod": "chat-1"})),
        alert("KwasiQueueSaturated", "20m", [], series("kwasi_requests_waiting", "2x30", **POD)),
        alert("KwasiRequestsRejected", "15m", [(
            {**OBJ, "alertname": "KwasiRequestsRejected", "severity": "warning"},
            {"summary": "ml/chat: 10% of requests refused (429)",
             "description": "More than 5% of requests found the queue full (--max-queue) for 5m "
                            "(kwasi_requests_total)."})],
              requests("429", "0+1x30"), requests("200", "0+9x30")),
        alert("KwasiRequestsRejected", "15m", [], requests("429", "0+0x30"), requests("200", "0+9x30")),
        alert("KwasiStreamsStall", "20m", [(
            {**OBJ, "alertname": "KwasiStreamsStall", "severity": "warning"},
            {"summary": "ml/chat: streams stall for 9.95s",
             "description": "The 99th percentile of each stream's longest gap between two tokens stayed above 5s "
                            "for 10m (kwasi_stream_max_stall_seconds)."})],
              bucket(stall, "5.0", "0+0x30"), bucket(stall, "10.0", "0+10x30"), bucket(stall, "+Inf", "0+10x30")),
        alert("KwasiStreamsStall", "20m", [], bucket(stall, "0.1", "0+10x30"), bucket(stall, "+Inf", "0+10x30")),
        # Only kwasi-runtime targets (the operator's relabelling gives them `wasminference`).
        alert("KwasiRuntimeDown", "10m", [(
            {"alertname": "KwasiRuntimeDown", "severity": "critical", "job": "kwasi", "instance": "10.0.0.1:8080",
             "namespace": "ml", "wasminference": "chat", "pod": "chat-0"},
            {"summary": "ml/chat-0: /metrics cannot be scraped",
             "description": "Prometheus could not scrape a kwasi-runtime pod for 5m (up)."})],
              series("up", "0x20", job="kwasi", instance="10.0.0.1:8080", namespace="ml", wasminference="chat",
                     pod="chat-0"),
              series("up", "0x20", job="node", instance="10.0.0.2:9100")),
        alert("KwasiRuntimeDown", "10m", [], series("up", "1x20", job="kwasi", namespace="ml", wasminference="chat",
                                                    pod="chat-0")),
        # A failed start-up is scraped once or twice before the pod exits; the alert holds for the lookback.
        alert("KwasiModelLoadFailed", "5m", [(
            {**OBJ, "pod": "chat-0", "model": "default", "alertname": "KwasiModelLoadFailed", "severity": "critical"},
            {"summary": "ml/chat-0: model default failed to load",
             "description": "A pod failed to load a model at start-up within the last 15m; it exits and restarts "
                            "(kwasi_model_load_failures_total; its log and /readyz say why)."})],
              series("kwasi_model_load_failures_total", "0 1 1", **{**OBJ, "pod": "chat-0", "model": "default"})),
        alert("KwasiModelLoadFailed", "20m", [],
              series("kwasi_model_load_failures_total", "0 1 1", **{**OBJ, "pod": "chat-0", "model": "default"})),
        alert("KwasiModelLoadFailed", "5m", [],
              series("kwasi_model_load_failures_total", "0x10", **{**OBJ, "pod": "chat-0", "model": "default"})),
        alert("KwasiPodsNotReady", "20m", [(
            {**OBJ, "alertname": "KwasiPodsNotReady", "severity": "warning"},
            {"summary": "ml/chat: 2 replicas not ready",
             "description": "Pods of a WasmInference stayed not ready for 15m: see its status conditions "
                            "(kwasi_operator_wasminference_replicas)."})],
              series("kwasi_operator_wasminference_replicas", "3x30", **OBJ, state="desired"),
              series("kwasi_operator_wasminference_replicas", "1x30", **OBJ, state="ready")),
        alert("KwasiPodsNotReady", "20m", [],
              series("kwasi_operator_wasminference_replicas", "3x30", **OBJ, state="desired"),
              series("kwasi_operator_wasminference_replicas", "3x30", **OBJ, state="ready")),
        alert("KwasiOperatorReconcileErrors", "25m", [(
            {"reason": "api_409", "alertname": "KwasiOperatorReconcileErrors", "severity": "warning"},
            {"summary": "kwasi-operator: reconciles fail (api_409)",
             "description": "Reconciles failed at more than 0.05/s for 15m (kwasi_operator_reconcile_errors_total)."})],
              series("kwasi_operator_reconcile_errors_total", "0+6x30", reason="api_409")),
        alert("KwasiOperatorReconcileErrors", "25m", [],
              series("kwasi_operator_reconcile_errors_total", "0+1x30", reason="api_409")),
    ]


def test_every_alert_fires_and_stays_quiet_under_promtool(helm: str, tmp_path: Path) -> None:
    spec = rules(helm)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": spec["groups"]}))
    promtool = str(binaries().promtool)
    check = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = unit_tests()
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"]}
    tested = {t["alert_rule_test"][0]["alertname"] for t in tests}
    assert tested == alerts  # every alert the chart ships, and each both firing and quiet
    for name in alerts:
        outcomes = {bool(t["alert_rule_test"][0]["exp_alerts"]) for t in tests
                    if t["alert_rule_test"][0]["alertname"] == name}
        assert outcomes == {True, False}, name
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                                         "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(tmp_path / "tests.yaml")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
