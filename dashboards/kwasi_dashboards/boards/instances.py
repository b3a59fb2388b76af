"""Instances: the same signals per pod, to find the one that differs; start-up and sandbox costs."""

from __future__ import annotations

from kwasi_dashboards.boards import runtime
from kwasi_dashboards.boards.runtime import MODELS, PODS
from kwasi_dashboards.grafana import Board, Column, Obj, Query, heatmap, table, timeseries

UID = "kwasi-instances"
GPU = PODS  # the GPU-memory gauges are per process, without a model label
POD = ("pod",)
RANGE = "$__range"  # the table summarises the dashboard's time range


def dashboard() -> Obj:
    b = Board(UID, "kwasi / Instances", "kwasi-runtime pods side by side: throughput, latency, KV cache, GPU "
              "memory, model load and guest instantiation.", runtime.variables())

    b.row("Pods")
    b.add(table("Pods", "One row per pod: rates and quantiles over the time range, the rest as last scraped.",
                "pod", [
        Column("Output tok/s", "count:tok/s", MODELS.sum_rate("kwasi_generation_tokens_total", by=POD, window=RANGE)),
        Column("Requests/s", "reqps", MODELS.sum_rate("kwasi_requests_total", by=POD, window=RANGE)),
        Column("TTFT p95", "s", MODELS.quantile(0.95, "kwasi_time_to_first_token_seconds", by=POD, window=RANGE)),
        Column("E2E p95", "s", MODELS.quantile(0.95, "kwasi_e2e_request_latency_seconds", by=POD, window=RANGE)),
        Column("Running", "short", f"sum by (pod) ({MODELS.sel('kwasi_requests_running')})"),
        Column("Waiting", "short", f"sum by (pod) ({MODELS.sel('kwasi_requests_waiting')})"),
        Column("KV usage", "percentunit", f"max by (pod) ({MODELS.sel('kwasi_kv_cache_usage_ratio')})"),
        Column("KV tokens", "short", f"sum by (pod) ({MODELS.sel('kwasi_kv_cache_usage_tokens')})"),
        Column("GPU memory", "bytes", f"sum by (pod) ({GPU.sel('kwasi_gpu_memory_allocated_bytes')})"),
        Column("Model load", "s", f"max by (pod) ({MODELS.sel('kwasi_model_load_seconds')})"),
    ]))

    b.row("Per pod")
    b.add(
        timeseries("Output tokens / s by pod", "Tokens generated per second on each pod.", "count:tok/s",
                   [Query(MODELS.sum_rate("kwasi_generation_tokens_total", by=POD), "{{pod}}")]),
        timeseries("TTFT p95 by pod", "95th percentile time to first token on each pod.", "s",
                   [Query(MODELS.quantile(0.95, "kwasi_time_to_first_token_seconds", by=POD), "{{pod}}")]),
        timeseries("KV cache usage by pod", "Share of each pod's KV-cache positions holding tokens.",
                   "percentunit",
                   [Query(f"max by (pod) ({MODELS.sel('kwasi_kv_cache_usage_ratio')})", "{{pod}}")]),
        timeseries("GPU memory by pod", "torch.cuda memory allocated and reserved by each pod's process.", "bytes", [
            Query(f"sum by (pod) ({GPU.sel('kwasi_gpu_memory_allocated_bytes')})", "{{pod}} allocated"),
            Query(f"sum by (pod) ({GPU.sel('kwasi_gpu_memory_reserved_bytes')})", "{{pod}} reserved")]),
        timeseries("Running and waiting by pod", "Requests running and queued on each pod.", "short", [
            Query(f"sum by (pod) ({MODELS.sel('kwasi_requests_running')})", "{{pod}} running"),
            Query(f"sum by (pod) ({MODELS.sel('kwasi_requests_waiting')})", "{{pod}} waiting")]),
        timeseries("Requests by pod", "Finished requests per second on each pod, every status.", "reqps",
                   [Query(MODELS.sum_rate("kwasi_requests_total", by=POD), "{{pod}}")]),
    )

    b.row("Start-up and sandbox")
    b.add(
        heatmap("Model load time", "How long pods took to load each named model at start-up (one value per pod "
                "and model, bucketed by Grafana).", "s",
                Query(MODELS.sel("kwasi_model_load_seconds"), "{{pod}} {{model}}"), calculate=True),
        heatmap("Guest instantiate time", "Fresh Store, WASI set-up and instantiation of the guest, per request.",
                "s", Query(MODELS.sum_increase("kwasi_guest_instantiate_seconds_bucket", by=("le",)), "{{le}}",
                           format="heatmap")),
        timeseries("Model load failures", "Start-up loads that failed, per pod and model: 1 while a pod that "
                   "failed is still scraped (it exits a minute later and restarts).", "short",
                   [Query(f"max by (pod, model) (max_over_time({MODELS.sel('kwasi_model_load_failures_total')}"
                          "[$__rate_interval]))", "{{pod}} {{model}}")]),
        timeseries("Guest instantiate p50 / p99", "Per-request sandbox cost: instantiation quantiles.", "s", [
            Query(MODELS.quantile(0.5, "kwasi_guest_instantiate_seconds"), "p50"),
            Query(MODELS.quantile(0.99, "kwasi_guest_instantiate_seconds"), "p99")]),
    )
    return b.json()
