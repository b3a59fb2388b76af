"""vLLM-compatible metric names (`serve --vllm-metrics`): the Gateway API inference extension's endpoint picker,
KEDA examples and vLLM's Grafana dashboards read these names and the `model_name` label unchanged.

The series are derived at scrape time from kwasi's own registry (serve/metrics.py stays the one place that
defines and writes metrics): each vLLM family sums its kwasi family over the `module` label, per model. The
mapping is documented in runtime/README.md ("vLLM-compatible metrics").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from kwasi_runtime.serve.metrics import Metrics

# vLLM name -> (kwasi family, kind); both histograms keep kwasi's buckets (quantile queries work on any ladder).
GAUGES = {
    "vllm:num_requests_running": "kwasi_requests_running",
    "vllm:num_requests_waiting": "kwasi_requests_waiting",
    "vllm:kv_cache_usage_perc": "kwasi_kv_cache_usage_ratio",
    "vllm:gpu_cache_usage_perc": "kwasi_kv_cache_usage_ratio",  # the name before vLLM 0.10
}
COUNTERS = {
    "vllm:prompt_tokens": "kwasi_prompt_tokens",
    "vllm:generation_tokens": "kwasi_generation_tokens",
}
HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": "kwasi_time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds": "kwasi_inter_token_latency_seconds",
    "vllm:time_per_output_token_seconds": "kwasi_time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds": "kwasi_e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds": "kwasi_request_queue_time_seconds",
    "vllm:request_prefill_time_seconds": "kwasi_request_prefill_time_seconds",
    "vllm:request_prompt_tokens": "kwasi_request_prompt_tokens",
    "vllm:request_generation_tokens": "kwasi_request_generation_tokens",
}
SUCCESS = "vllm:request_success"  # kwasi_requests_total with a 2xx status, by finished_reason


class VllmCollector(Collector):
    def __init__(self, metrics: Metrics, models: Sequence[str]) -> None:
        self.metrics = metrics
        self.models = list(models)

    def collect(self) -> Iterator[Metric]:
        families = {f.name: f for f in self.metrics.registry.collect()}
        for table, kind, suffix in ((GAUGES, GaugeMetricFamily, ""), (COUNTERS, CounterMetricFamily, "_total")):
            for name, source in table.items():
                values = self._sum(families.get(source), suffix)
                family = kind(name, f"kwasi's {source}, summed per model.", labels=["model_name"])
                for model in self._models(values):
                    family.add_metric([model], values.get((model,), 0.0))
                yield family
        yield self._success(families.get("kwasi_requests"))
        for name, source in HISTOGRAMS.items():
            yield self._histogram(name, source, families.get(source))

    def _models(self, values: dict[tuple[str, ...], float]) -> list[str]:
        seen = [m for m in self.models]
        return seen + sorted({k[0] for k in values} - set(seen) - {""})

    @staticmethod
    def _sum(family: Metric | None, suffix: str) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = defaultdict(float)
        if family is not None:
            for s in family.samples:
                if s.name == family.name + suffix:
                    out[(s.labels.get("model", ""),)] += s.value
        return out

    def _success(self, family: Metric | None) -> Metric:
        c = CounterMetricFamily(SUCCESS, "Finished requests with a 2xx status, by finished_reason.",
                                labels=["model_name", "finished_reason"])
        counts: dict[tuple[str, str], float] = defaultdict(float)
        for model in self.models:
            for reason in ("stop", "length"):
                counts[(model, reason)] += 0.0
        if family is not None:
            for s in family.samples:
                if s.name == "kwasi_requests_total" and s.labels.get("status", "").startswith("2") \
                        and s.labels.get("model"):
                    counts[(s.labels["model"], s.labels.get("finish_reason", ""))] += s.value
        for (model, reason), value in sorted(counts.items()):
            c.add_metric([model, reason], value)
        return c

    def _histogram(self, name: str, source: str, family: Metric | None) -> Metric:
        h = HistogramMetricFamily(name, f"kwasi's {source}, summed per model.", labels=["model_name"])
        buckets: dict[str, dict[str, float]] = defaultdict(dict)
        sums: dict[str, float] = defaultdict(float)
        if family is not None:
            for s in family.samples:
                model = s.labels.get("model", "")
                if not model:
                    continue
                if s.name == source + "_bucket":
                    le = s.labels["le"]
                    buckets[model][le] = buckets[model].get(le, 0.0) + s.value
                elif s.name == source + "_sum":
                    sums[model] += s.value
        for model, ladder in sorted(buckets.items()):
            ordered = sorted(ladder.items(), key=lambda kv: float(kv[0]))
            h.add_metric([model], ordered, sums[model])
        return h


def vllm_registry(metrics: Metrics, models: Sequence[str]) -> CollectorRegistry:
    """A registry holding only the vLLM-named view of `metrics` (appended to /metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VllmCollector(metrics, models))
    return registry
