"""PromQL builders: one selector string per scope, and the few query shapes every panel is made of.

Rates use `$__rate_interval` (Grafana sizes it from the scrape interval); quantiles aggregate buckets with
`sum by (le)` before `histogram_quantile`; every division is guarded by `> 0` on its denominator, so an idle
window gives no value rather than NaN or a division by zero.
"""

from __future__ import annotations

from collections.abc import Sequence

RATE = "$__rate_interval"


def matchers(*pairs: tuple[str, str], extra: Sequence[str] = ()) -> str:
    """`label=~"$variable"` for each (label, variable), then any literal matchers."""
    return ", ".join([*(f'{label}=~"${var}"' for label, var in pairs), *extra])


class Scope:
    """The label matchers a family of panels applies: which targets, which models."""

    def __init__(self, *pairs: tuple[str, str]) -> None:
        self.pairs = pairs

    def without(self, label: str) -> Scope:
        """The same scope for a metric that lacks `label` (e.g. the GPU gauges have no `model`)."""
        return Scope(*(p for p in self.pairs if p[0] != label))

    def sel(self, metric: str, *extra: str) -> str:
        return f"{metric}{{{matchers(*self.pairs, extra=extra)}}}"

    def rate(self, metric: str, *extra: str, window: str = RATE) -> str:
        return f"rate({self.sel(metric, *extra)}[{window}])"

    def sum_rate(self, metric: str, *extra: str, by: Sequence[str] = (), window: str = RATE) -> str:
        return f"sum{_by(by)}({self.rate(metric, *extra, window=window)})"

    def sum_increase(self, metric: str, *extra: str, by: Sequence[str] = (), window: str = RATE) -> str:
        return f"sum{_by(by)}(increase({self.sel(metric, *extra)}[{window}]))"

    def quantile(self, q: float, histogram: str, by: Sequence[str] = (), window: str = RATE) -> str:
        return f"histogram_quantile({q:g}, {self.sum_rate(f'{histogram}_bucket', by=('le', *by), window=window)})"

    def mean(self, histogram: str, by: Sequence[str] = ()) -> str:
        """Mean over the window: rate of the sum over rate of the count (never the lifetime _sum/_count)."""
        return guarded(self.sum_rate(f"{histogram}_sum", by=by), self.sum_rate(f"{histogram}_count", by=by))

    def share_below(self, histogram: str, bound: str, window: str = RATE) -> str:
        """The share of observations at or under `bound`, which must be one of the histogram's boundaries."""
        return guarded(self.sum_increase(f"{histogram}_bucket", f'le="{bound}"', window=window),
                       self.sum_increase(f"{histogram}_count", window=window))


def guarded(numerator: str, denominator: str) -> str:
    return f"{numerator} / ({denominator} > 0)"


def _by(labels: Sequence[str]) -> str:
    return f" by ({', '.join(labels)}) " if labels else ""
