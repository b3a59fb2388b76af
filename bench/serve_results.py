"""What bench/serve.py measures and how it reports it: per-stream timings, rows pooled over repeats, the
table with the issue targets' verdicts, and the plot of tokens/s against concurrent streams."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

TPOT_OVERHEAD_TARGET = 0.05
SCALING_TARGET_CPU, SCALING_TARGET_GPU = 2.0, 6.0
ONE_STREAM_VS_PEER, MANY_STREAMS_VS_PEER, SERVED_VS_DIRECT = 0.9, 2.0, 0.95
KWASI, LLAMA, DIRECT = "kwasi", "llama.cpp", "direct"
KWASI_RAW = "kwasi-raw"  # kwasi read by a bare SSE reader instead of the openai client (--raw-sse)


@dataclass
class StreamTiming:
    start: float
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.start

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]


@dataclass
class Row:
    path: str
    streams: int
    timings: list[StreamTiming]
    wall_s: float

    @property
    def tokens(self) -> int:
        return sum(len(t.token_times) for t in self.timings)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def tpot(self) -> float:
        """Mean of the per-stream (last - first) / (n - 1)."""
        per = [(t.token_times[-1] - t.token_times[0]) / (len(t.token_times) - 1)
               for t in self.timings if len(t.token_times) > 1]
        return statistics.fmean(per) if per else float("nan")


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def pool(rows: list[Row]) -> list[Row]:
    """Repeats of one (path, streams) as one row: all timings pooled, wall time summed."""
    pooled: dict[tuple[str, int], Row] = {}
    for r in rows:
        key = (r.path, r.streams)
        if key in pooled:
            pooled[key] = Row(r.path, r.streams, pooled[key].timings + r.timings, pooled[key].wall_s + r.wall_s)
        else:
            pooled[key] = r
    order = {KWASI: 0, LLAMA: 1, DIRECT: 2}
    return sorted(pooled.values(), key=lambda r: (order.get(r.path, 3), r.streams))


def verdict(ok: bool) -> str:
    return "meets" if ok else "misses"


def report(rows: list[Row], rss: dict[str, float]) -> None:
    print(f"{'path':10} {'streams':>7} {'tokens':>7} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'ITL p50':>8} {'ITL p99':>8} {'TPOT':>8}")
    for r in rows:
        ttfts = [t.ttft for t in r.timings if t.token_times]
        gaps = [g for t in r.timings for g in t.gaps]
        print(f"{r.path:10} {r.streams:7d} {r.tokens:7d} {r.tokens_per_s:8.1f} {pct(ttfts, .5) * 1e3:7.1f}ms "
              f"{pct(ttfts, .99) * 1e3:7.1f}ms {pct(gaps, .5) * 1e3:6.1f}ms {pct(gaps, .99) * 1e3:6.1f}ms "
              f"{r.tpot * 1e3:6.2f}ms")
    print("peak RSS: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in rss.items()))
    by = {(r.path, r.streams): r for r in rows}
    for n in sorted({r.streams for r in rows}):
        ours, peer = by.get((KWASI, n)), by.get((LLAMA, n))
        if ours and peer:
            ratio = ours.tokens_per_s / peer.tokens_per_s
            target = ONE_STREAM_VS_PEER if n == 1 else MANY_STREAMS_VS_PEER
            print(f"kwasi / llama.cpp server at {n:2d} stream{'s' if n > 1 else ' '}: {ratio:5.2f}x tokens/s "
                  f"({verdict(ratio >= target)} the >= {target:g}x target)")
    served, direct = by.get((KWASI, 1)), by.get((DIRECT, 1))
    if served and direct:
        ratio = direct.tpot / served.tpot
        print(f"one served stream / direct batch-1: {ratio:.2f}x tokens/s per stream "
              f"({verdict(ratio >= SERVED_VS_DIRECT)} the >= {SERVED_VS_DIRECT:g}x target); "
              f"HTTP+sandbox overhead on time per output token {(1 / ratio - 1) * 100:+.1f}% "
              f"({verdict(1 / ratio - 1 <= TPOT_OVERHEAD_TARGET)} the <= {TPOT_OVERHEAD_TARGET * 100:.0f}% target)")
    raw = by.get((KWASI_RAW, 1))
    if raw and direct:
        ratio = direct.tpot / raw.tpot
        print(f"the same, read by a bare SSE reader (no openai client parsing on the shared cores): "
              f"{ratio:.2f}x ({verdict(ratio >= SERVED_VS_DIRECT)} the >= {SERVED_VS_DIRECT:g}x target)")
    most = max((r.streams for r in rows), default=1)
    for path in (KWASI, DIRECT):
        one, many = by.get((path, 1)), by.get((path, most))
        if one and many and most > 1:
            target = SCALING_TARGET_GPU if _on_gpu() else SCALING_TARGET_CPU
            scale = many.tokens_per_s / one.tokens_per_s
            print(f"{path}: aggregate tokens/s at {most} streams = {scale:.2f}x one stream "
                  f"({verdict(scale >= target)} the >= {target:g}x {'GPU' if _on_gpu() else 'CPU'} target"
                  f"{', set for 16 streams' if most != 16 else ''})")


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {KWASI: "kwasi-runtime serve", LLAMA: "llama.cpp server (llama-cpp-python)", DIRECT: "kwasi direct"}
    for name, label in labels.items():
        points = sorted((r.streams, r.tokens_per_s) for r in rows if r.path == name)
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_xscale("log", base=2)
    ticks = sorted({r.streams for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def _on_gpu() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())
