"""Every query of a dashboard run against a real Prometheus, with variables and macros resolved as Grafana does.

Grafana cannot run here, so this is how a dashboard is proven: each query variable is resolved by Prometheus'
label-values API (in dashboard order, so later variables see earlier ones), each target's `$__rate_interval`,
`$__interval` and `$__range` become durations, and the query runs as a range query (or an instant one where
the target asks). A target has data when some sample is a number.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kwasi_dashboards.grafana import Obj

Choice = Literal["all", "first"]
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$", re.S)
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    """The few HTTP API calls a dashboard needs."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, params: Sequence[tuple[str, str]]) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=self.timeout_s) as resp:
                doc = json.load(resp)
        except urllib.error.HTTPError as e:  # 4xx carries Prometheus' own error document
            doc = json.load(e)
        if doc.get("status") != "success":
            raise PrometheusError(f"{doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str, at: float) -> list[Obj]:
        data = self._get("/api/v1/query", [("query", expr), ("time", f"{at:.3f}")])
        result: list[Obj] = data["result"] if data["resultType"] in ("vector", "matrix") else [
            {"metric": {}, "value": data["result"]}]
        return result

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[Obj]:
        data = self._get("/api/v1/query_range", [("query", expr), ("start", f"{start:.3f}"),
                                                  ("end", f"{end:.3f}"), ("step", f"{step_s:g}")])
        result: list[Obj] = data["result"]
        return result

    def label_values(self, label: str, match: str | None, start: float, end: float) -> list[str]:
        params = [("start", f"{start:.3f}"), ("end", f"{end:.3f}")]
        if match:
            params.append(("match[]", match))
        values: list[str] = self._get(f"/api/v1/label/{label}/values", params)
        return values


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    scrape_s: float  # the data source's scrape interval, which $__rate_interval derives from

    @property
    def step_s(self) -> float:
        return self.scrape_s

    def macros(self) -> dict[str, str]:
        interval = self.step_s
        # Grafana: $__rate_interval = max($__interval + scrape interval, 4 x scrape interval).
        rate = max(interval + self.scrape_s, 4 * self.scrape_s)
        return {"__rate_interval": f"{rate:g}s", "__interval": f"{interval:g}s",
                "__range": f"{max(1, round(self.end - self.start))}s"}


def regex_value(values: Sequence[str]) -> str:
    """A multi-value selection as Grafana writes it into a regex matcher."""
    escaped = [re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else f"({'|'.join(escaped)})"


def interpolate(expr: str, values: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return values.get(name, m.group(0))
    return VARIABLE.sub(sub, expr)


def resolve_variables(dashboard: Obj, prom: Prometheus, window: Window, choice: Choice) -> dict[str, str]:
    """Variable name -> the text Grafana puts in queries: All (`allValue`) or the first value offered."""
    resolved: dict[str, str] = dict(window.macros())
    for var in dashboard["templating"]["list"]:
        kind, name = var["type"], var["name"]
        if kind == "query":
            m = LABEL_VALUES.match(var["query"].strip())
            if m is None:
                raise ValueError(f"variable {name}: unsupported query {var['query']!r}")
            selector = interpolate(m["selector"], resolved) if m["selector"] else None
            options = prom.label_values(m["label"], selector, window.start, window.end)
            if not options:
                raise AssertionError(f"variable {name}: {var['query']!r} offers no values")
            resolved[name] = var["allValue"] if choice == "all" and var.get("includeAll") else regex_value(
                options[:1])
        elif kind == "custom":
            resolved[name] = var["current"]["value"]
    return resolved


@dataclass(frozen=True)
class TargetResult:
    dashboard: str
    panel: str
    ref: str
    expr: str
    series: int
    numbers: int  # samples that are numbers (not NaN or infinite)
    error: str = ""

    @property
    def has_data(self) -> bool:
        return not self.error and self.numbers > 0

    def __str__(self) -> str:
        state = self.error or f"{self.series} series, {self.numbers} numeric samples"
        return f"{self.dashboard} / {self.panel} [{self.ref}]: {state}\n    {self.expr}"


def panels(dashboard: Obj) -> Iterator[Obj]:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def _numbers(series: Sequence[Obj]) -> int:
    count = 0
    for s in series:
        for _, value in s.get("values") or [s["value"]]:
            number = float(value)
            count += not (math.isnan(number) or math.isinf(number))
    return count


def evaluate(dashboard: Obj, prom: Prometheus, window: Window, choice: Choice = "all") -> list[TargetResult]:
    values = resolve_variables(dashboard, prom, window, choice)
    results = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = interpolate(target["expr"], values)
            try:
                if target.get("instant"):
                    series = prom.query(expr, window.end)
                else:
                    series = prom.query_range(expr, window.start, window.end, window.step_s)
                results.append(TargetResult(dashboard["title"], panel["title"], target["refId"], expr,
                                            len(series), _numbers(series)))
            except PrometheusError as e:
                results.append(TargetResult(dashboard["title"], panel["title"], target["refId"], expr, 0, 0,
                                            str(e)))
    return results
