"""The committed dashboard JSON: generated, well-formed, following the conventions, naming only real metrics,
and every expression parsed by promtool."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kwasi_dashboards import catalog
from kwasi_dashboards.evaluate import Window, interpolate, panels
from kwasi_dashboards.grafana import DATASOURCE, SCHEMA_VERSION, metric_names
from kwasi_operator import metrics as operator_metrics
from kwasi_runtime.serve.metrics import Metrics
from kwasi_testing.prometheus import binaries

CORE_PANELS = {"row", "stat", "timeseries", "table", "heatmap"}
UNITS = {"s", "reqps", "ops", "percentunit", "percent", "bytes", "mbytes", "short", "watt", "count:tok/s"}
# The DCGM exporter's fields the GPU dashboard reads (NVIDIA/dcgm-exporter etc/default-counters.csv and
# etc/dcp-metrics-included.csv): not kwasi's, so checked against this list.
DCGM_FIELDS = {"DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
               "DCGM_FI_DEV_POWER_USAGE"}
RUNTIME_ANCHOR = "kwasi_requests_running"
OPERATOR_ANCHORS = {"kwasi_operator_managed_objects", "kwasi_operator_wasminference_replicas"}

Obj = dict[str, Any]


def committed() -> dict[str, Obj]:
    return {uid: json.loads(catalog.path(uid).read_text()) for uid in catalog.DASHBOARDS}


def exported_names() -> set[str]:
    """Every sample name the runtime and the operator can expose, from their registries' metric types."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for registry in (Metrics().registry, operator_metrics.REGISTRY):
        for family in registry.collect():
            names.update(family.name + s for s in suffixes[family.type])
    return names


def targets(board: Obj) -> list[tuple[Obj, Obj]]:
    return [(p, t) for p in panels(board) for t in p.get("targets", [])]


def test_committed_json_is_what_the_generator_writes() -> None:
    assert catalog.stale() == [], "run `make dashboards` and commit the result"


def test_the_staleness_check_catches_an_edit(tmp_path: Path) -> None:
    catalog.write(tmp_path)
    assert catalog.stale(tmp_path) == []
    edited = catalog.path("kwasi-overview", tmp_path)
    edited.write_text(edited.read_text().replace("Requests / s", "Requests"))
    (tmp_path / "old.json").write_text("{}")
    assert catalog.stale(tmp_path) == [str(edited), str(tmp_path / "old.json")]


@pytest.mark.parametrize("uid", list(catalog.DASHBOARDS))
def test_dashboard_conventions(uid: str) -> None:
    board = committed()[uid]
    assert (board["uid"], board["id"], board["schemaVersion"]) == (uid, None, SCHEMA_VERSION)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", uid)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "wasminference", "pod"):
        assert name in variables, name
    if uid != "kwasi-operator":
        assert "model" in variables
    for var in variables.values():
        if var["type"] != "query":
            continue
        assert (var["multi"], var["includeAll"], var["refresh"], var["datasource"]) == (True, True, 2, DATASOURCE)
        anchors = {RUNTIME_ANCHOR} if uid != "kwasi-operator" else OPERATOR_ANCHORS
        assert metric_names([var["query"]])[0] in anchors, var["query"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel["type"] in CORE_PANELS, panel["title"]
        if panel["type"] == "row":
            continue
        where = f"{uid} / {panel['title']}"
        assert panel["datasource"] == DATASOURCE, where
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, where
        exprs = [t["expr"] for t in panel["targets"]]
        assert exprs, where
        for name in metric_names(exprs):
            assert f"`{name}`" in panel["description"], f"{where}: the description does not name {name}"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, where


def test_queries_follow_the_promql_rules() -> None:
    for uid, board in committed().items():
        for panel, target in targets(board):
            expr, where = target["expr"], f"{uid} / {panel['title']} [{target['refId']}]"
            # Counters and histogram parts only inside rate/increase (or the peak of a failure count), over
            # Grafana's windows.
            for m in re.finditer(r"\b(kwasi_\w+?(?:_total|_bucket|_sum|_count))\{[^}]*\}(\[[^\]]*\])?", expr):
                assert m.group(2) in ("[$__rate_interval]", "[$__range]"), f"{where}: {m.group(0)}"
                assert re.search(r"(rate|increase|max_over_time)\($", expr[: m.start()]), f"{where}: raw {m.group(1)}"
            for q in re.finditer(r"histogram_quantile\(([\d.]+), sum by \(le\b[^)]*\) \(rate\(\w+_bucket\{", expr):
                assert 0 < float(q.group(1)) < 1
            assert expr.count("histogram_quantile(") == len(re.findall(
                r"histogram_quantile\([\d.]+, sum by \(le\b", expr)), f"{where}: quantile without sum by (le)"
            # Every division is guarded: its denominator is filtered by `> 0` (ratios of gauges included);
            # dividing by a number is a unit conversion.
            for div in re.finditer(r"\) / ", expr):
                rest = expr[div.end():]
                if re.match(r"[\d.]", rest):
                    continue
                assert rest.startswith("(") and re.match(r"\(.*> 0\)$", rest), f"{where}: unguarded division"


def test_every_metric_a_panel_names_is_exported_by_kwasi() -> None:
    names = exported_names()
    for uid, board in committed().items():
        exprs = [t["expr"] for _, t in targets(board)] + [v["query"] for v in board["templating"]["list"]
                                                         if v["type"] == "query"]
        for name in metric_names(exprs):
            if name == "up":
                continue
            if name.startswith("DCGM_"):
                assert uid == "kwasi-gpu" and name in DCGM_FIELDS, f"{uid}: {name}"
            else:
                assert name in names, f"{uid}: {name} is not exported by the runtime or the operator"


def test_the_metric_check_itself_rejects_unknown_names() -> None:
    names = exported_names()
    assert {"kwasi_requests_total", "kwasi_time_to_first_token_seconds_bucket", "kwasi_requests_running",
            "kwasi_operator_reconciles_total", "kwasi_operator_workqueue_depth"} <= names
    assert "kwasi_requests" not in names and "kwasi_requests_running_total" not in names


def as_rules(exprs: list[str]) -> str:
    window = Window(0, 3600, 15)
    values = {**window.macros(), "ttft_slo": "1.0", "tpot_slo": "0.1"}
    rules = [{"record": f"kwasi:panel_{i}", "expr": re.sub(r'\$\{?\w+\}?', ".*", interpolate(e, values))}
             for i, e in enumerate(exprs)]
    return yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]})


def promtool_check(tmp_path: Path, exprs: list[str]) -> subprocess.CompletedProcess[str]:
    rules = tmp_path / "panels.yaml"
    rules.write_text(as_rules(exprs))
    return subprocess.run([str(binaries().promtool), "check", "rules", str(rules)], capture_output=True, text=True,
                          timeout=120)


def test_promtool_parses_every_expression(tmp_path: Path) -> None:
    exprs = [t["expr"] for board in committed().values() for _, t in targets(board)]
    result = promtool_check(tmp_path, exprs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_promtool_check_fails_on_a_broken_expression(tmp_path: Path) -> None:
    result = promtool_check(tmp_path, ['sum(rate(kwasi_requests_total{model=~"$model"}[$__rate_interval])'])
    assert result.returncode != 0 and "unclosed left parenthesis" in result.stdout + result.stderr
