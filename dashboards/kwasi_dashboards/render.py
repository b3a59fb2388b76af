"""A dashboard drawn with matplotlib from real Prometheus data: what Grafana would show, for the docs.

Panels are placed on Grafana's 24-column grid; stat panels show their last value, time series one line per
series with Grafana's legend format. Only the panel types the Overview uses (row, stat, timeseries) are drawn.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure  # the object API: no pyplot state, no display needed

from kwasi_dashboards.evaluate import Prometheus, Window, interpolate, panels, resolve_variables
from kwasi_dashboards.grafana import WIDTH, Obj

ROW_UNIT_IN = 0.42  # inches per grid row
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
SUFFIX = {"reqps": " req/s", "count:tok/s": " tok/s", "ops": "/s", "percent": "%", "watt": " W"}


def format_value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "No traffic"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    return f"{value:.3g}{SUFFIX.get(unit, '')}"


def legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt or fmt == "__auto":
        return ", ".join(f"{k}={v}" for k, v in labels.items()) or "value"
    return LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), fmt)


def _series(prom: Prometheus, target: Obj, values: dict[str, str], window: Window) -> list[tuple[str, list[float],
                                                                                                  list[float]]]:
    expr = interpolate(target["expr"], values)
    if target.get("instant"):
        result = prom.query(expr, window.end)
        return [(legend(target.get("legendFormat", ""), s["metric"]), [window.end], [float(s["value"][1])])
                for s in result]
    result = prom.query_range(expr, window.start, window.end, window.step_s)
    return [(legend(target.get("legendFormat", ""), s["metric"]), [float(t) for t, _ in s["values"]],
             [float(v) for _, v in s["values"]]) for s in result]


def _stat(ax: Axes, panel: Obj, data: Sequence[tuple[str, list[float], list[float]]]) -> None:
    unit = panel["fieldConfig"]["defaults"]["unit"]
    last = math.nan
    for _, _, ys in data:
        numbers = [y for y in ys if not math.isnan(y)]
        if numbers:
            last = numbers[-1] if math.isnan(last) else last + numbers[-1]
    ax.text(0.5, 0.42, format_value(last, unit), ha="center", va="center", fontsize=17, weight="bold",
            color="#1f77b4" if not math.isnan(last) else "grey", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _timeseries(ax: Axes, panel: Obj, data: Sequence[tuple[str, list[float], list[float]]], t0: float) -> None:
    unit = panel["fieldConfig"]["defaults"]["unit"]
    scale, label = (1000.0, "ms") if unit == "s" else (100.0, "%") if unit == "percentunit" else (1.0, "")
    for name, xs, ys in data:
        ax.plot([x - t0 for x in xs], [y * scale for y in ys], label=name, linewidth=1.2)
    ax.set_ylabel(label or SUFFIX.get(unit, "").strip(), fontsize=7)
    ax.set_xlabel("s", fontsize=6, labelpad=0)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)
    if data:
        ax.legend(fontsize=6, loc="upper left", ncol=2, frameon=False)


def render(dashboard: Obj, prom: Prometheus, window: Window, out: Path) -> list[str]:
    """Writes the PNG; returns the titles of the panels drawn."""
    values = resolve_variables(dashboard, prom, window, "all")
    items = list(panels(dashboard))
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in items)
    fig = Figure(figsize=(16, rows * ROW_UNIT_IN))
    fig.suptitle(f"{dashboard['title']}  (rendered from Prometheus; {window.end - window.start:.0f} s window)",
                 fontsize=12, y=0.998)
    drawn = []
    for panel in items:
        g = panel["gridPos"]
        rect = (g["x"] / WIDTH + 0.008, 1 - (g["y"] + g["h"]) / rows + 0.25 / rows,
                g["w"] / WIDTH - 0.016, g["h"] / rows - 0.85 / rows)
        if panel["type"] == "row":
            fig.text(0.005, 1 - (g["y"] + 0.7) / rows, panel["title"], fontsize=11, weight="bold")
            continue
        if panel["type"] not in ("stat", "timeseries"):
            raise ValueError(f"cannot draw a {panel['type']} panel ({panel['title']})")
        if panel["type"] == "timeseries":  # room for the y tick labels
            rect = (rect[0] + 0.022, rect[1], rect[2] - 0.022, rect[3])
        ax = fig.add_axes(rect)
        ax.set_title(panel["title"], fontsize=8, loc="left")
        data = [s for target in panel["targets"] for s in _series(prom, target, values, window)]
        if panel["type"] == "stat":
            _stat(ax, panel, data)
        else:
            _timeseries(ax, panel, data, window.start)
        drawn.append(panel["title"])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return drawn
