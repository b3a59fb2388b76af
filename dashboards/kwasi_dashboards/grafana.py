"""Grafana dashboard JSON from plain Python: panels, variables, layout.

Only core panel types (timeseries, stat, table, heatmap, row); every panel and target uses the `${datasource}`
variable, carries a unit and a description that names the metrics it queries; ids and grid positions come
from the order panels are added, so the JSON is stable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

SCHEMA_VERSION = 41  # what Grafana 12 writes; older Grafanas load it as is, newer ones migrate it forward
DATASOURCE: Obj = {"type": "prometheus", "uid": "${datasource}"}
TAG = "kwasi"
WIDTH = 24
# Metric names a panel may query that are not kwasi's: Prometheus' own, and the DCGM exporter's fields.
METRIC_NAME = re.compile(r"\b(?:kwasi_[a-z0-9_]+|DCGM_[A-Z0-9_]+|up)\b(?=\s*[{\[),])")


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False
    format: str = "time_series"  # or "table", "heatmap"


def metric_names(exprs: Iterable[str]) -> list[str]:
    """Every metric a set of expressions selects, in first-seen order."""
    seen: dict[str, None] = {}
    for expr in exprs:
        for name in METRIC_NAME.findall(expr):
            seen.setdefault(name, None)
    return list(seen)


def _targets(queries: Sequence[Query]) -> list[Obj]:
    return [{
        "datasource": DATASOURCE,
        "refId": chr(ord("A") + i),
        "expr": q.expr,
        "legendFormat": q.legend or "__auto",
        "range": not q.instant,
        "instant": q.instant,
        "format": q.format,
        "editorMode": "code",
    } for i, q in enumerate(queries)]


def _describe(text: str, queries: Sequence[Query]) -> str:
    names = ", ".join(f"`{n}`" for n in metric_names(q.expr for q in queries))
    return f"{text}\n\nMetrics: {names}."


@dataclass
class Panel:
    type: str
    title: str
    description: str
    unit: str
    queries: Sequence[Query]
    width: int
    height: int
    options: Obj = field(default_factory=dict)
    defaults: Obj = field(default_factory=dict)  # fieldConfig.defaults beyond the unit
    overrides: list[Obj] = field(default_factory=list)
    transformations: list[Obj] = field(default_factory=list)

    def json(self, panel_id: int, x: int, y: int) -> Obj:
        out: Obj = {
            "type": self.type,
            "id": panel_id,
            "title": self.title,
            "description": _describe(self.description, self.queries),
            "datasource": DATASOURCE,
            "gridPos": {"x": x, "y": y, "w": self.width, "h": self.height},
            "fieldConfig": {"defaults": {"unit": self.unit, **self.defaults}, "overrides": self.overrides},
            "options": self.options,
            "targets": _targets(self.queries),
        }
        if self.transformations:
            out["transformations"] = self.transformations
        return out


def timeseries(title: str, description: str, unit: str, queries: Sequence[Query], *, width: int = 12,
               height: int = 8, stack: bool = False, minimum: float | None = 0) -> Panel:
    custom: Obj = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if stack else 0, "showPoints": "never",
                   "spanNulls": False, "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults: Obj = {"custom": custom}
    if minimum is not None:
        defaults["min"] = minimum
    options = {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                          "calcs": ["mean", "max", "lastNotNull"]},
               "tooltip": {"mode": "multi", "sort": "desc"}}
    return Panel("timeseries", title, description, unit, queries, width, height, options, defaults)


def stat(title: str, description: str, unit: str, queries: Sequence[Query], *, width: int = 4, height: int = 4,
         thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),), decimals: int | None = None) -> Panel:
    defaults: Obj = {
        "thresholds": {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in thresholds]},
        "color": {"mode": "thresholds"},
        "noValue": "No traffic",
        "mappings": [{"type": "special", "options": {"match": "nan", "result": {"text": "No traffic"}}}],
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "textMode": "auto",
               "orientation": "auto"}
    return Panel("stat", title, description, unit, queries, width, height, options, defaults)


@dataclass(frozen=True)
class Column:
    header: str
    unit: str
    expr: str


def table(title: str, description: str, key: str, columns: Sequence[Column], *, width: int = 24,
          height: int = 8) -> Panel:
    """One row per `key` label value, one column per instant query (joined on the labels by Grafana's merge)."""
    queries = [Query(c.expr, instant=True, format="table") for c in columns]
    refs = [t["refId"] for t in _targets(queries)]
    overrides = [{"matcher": {"id": "byName", "options": f"Value #{ref}"},
                  "properties": [{"id": "displayName", "value": c.header}, {"id": "unit", "value": c.unit}]}
                 for ref, c in zip(refs, columns, strict=True)]
    transformations = [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": {"Time": True}, "indexByName": {key: 0},
                                       "renameByName": {}}},
    ]
    options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}, "sortBy": [
        {"displayName": columns[0].header, "desc": True}]}
    return Panel("table", title, description, "short", queries, width, height, options, {},
                 overrides, transformations)


def heatmap(title: str, description: str, unit: str, query: Query, *, calculate: bool = False, width: int = 12,
            height: int = 8) -> Panel:
    """Buckets from a histogram (`format: heatmap`), or, with `calculate`, from the values of plain series."""
    options: Obj = {
        "calculate": calculate,
        "cellGap": 1,
        "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64, "exponent": 0.5, "fill": "dark-orange",
                  "reverse": False},
        "yAxis": {"axisPlacement": "left", "unit": unit},
        "rowsFrame": {"layout": "auto"},
        "tooltip": {"mode": "single", "yHistogram": True, "showColorScale": False},
        "legend": {"show": True},
        "cellValues": {"unit": "short"},
        "filterValues": {"le": 1e-9},
    }
    if calculate:
        options["calculation"] = {"yBuckets": {"mode": "count", "value": "10", "scale": {"type": "log", "log": 2}}}
    return Panel("heatmap", title, description, unit, [query], width, height, options, {})


# --- variables ---------------------------------------------------------------------------------------------

def datasource_variable() -> Obj:
    return {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "regex": ""}


def query_variable(name: str, label: str, query: str) -> Obj:
    """Multi-select with All (`.*`, so series without the label's value and pods that appear later match)."""
    return {"type": "query", "name": name, "label": label, "datasource": DATASOURCE, "query": query,
            "definition": query, "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [], "sort": 1,
            "regex": "", "hide": 0}


def custom_variable(name: str, label: str, values: Sequence[str], default: str, description: str) -> Obj:
    return {"type": "custom", "name": name, "label": label, "description": description,
            "query": ",".join(values), "current": {"selected": True, "text": default, "value": default},
            "options": [{"selected": v == default, "text": v, "value": v} for v in values],
            "multi": False, "includeAll": False, "hide": 0}


def adhoc_variable() -> Obj:
    return {"type": "adhoc", "name": "filters", "label": "Filters", "datasource": DATASOURCE, "filters": [],
            "hide": 0}


# --- the dashboard -----------------------------------------------------------------------------------------

@dataclass
class Board:
    uid: str
    title: str
    description: str
    variables: list[Obj]
    panels: list[Obj] = field(default_factory=list)
    _x: int = 0
    _y: int = 0
    _row_height: int = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "id": len(self.panels) + 1, "title": title, "collapsed": False,
                            "gridPos": {"x": 0, "y": self._y, "w": WIDTH, "h": 1}, "panels": []})
        self._y += 1

    def add(self, *panels: Panel) -> None:
        for panel in panels:
            if self._x + panel.width > WIDTH:
                self._newline()
            self.panels.append(panel.json(len(self.panels) + 1, self._x, self._y))
            self._x += panel.width
            self._row_height = max(self._row_height, panel.height)

    def _newline(self) -> None:
        self._y += self._row_height
        self._x, self._row_height = 0, 0

    def json(self) -> Obj:
        return {
            "uid": self.uid,
            "id": None,
            "title": self.title,
            "description": self.description,
            "tags": [TAG],
            "editable": True,
            "graphTooltip": 1,
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "refresh": "30s",
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "time": {"from": "now-1h", "to": "now"},
            "timepicker": {},
            "timezone": "browser",
            "weekStart": "",
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
                "type": "dashboard"}]},
            # The other kwasi dashboards, keeping the time range and the variables.
            "links": [{"type": "dashboards", "tags": [TAG], "asDropdown": True, "title": "kwasi",
                       "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
                       "tooltip": "", "url": ""}],
            "templating": {"list": self.variables},
            "panels": self.panels,
        }
