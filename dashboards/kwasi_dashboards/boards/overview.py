"""Overview: the fleet of kwasi-runtime pods a selection covers, as one service."""

from __future__ import annotations

from kwasi_dashboards.boards import runtime
from kwasi_dashboards.boards.runtime import MODELS, PODS
from kwasi_dashboards.grafana import Board, Obj, Panel, Query, custom_variable, stat, timeseries
from kwasi_dashboards.promql import guarded

UID = "kwasi-overview"
# SLO choices are boundaries of the runtime's LATENCY_BUCKETS, written as Prometheus 3 stores `le` (1 -> "1.0").
TTFT_SLOS = ("0.1", "0.2", "0.5", "1.0", "2.0", "5.0", "10.0")
TPOT_SLOS = ("0.02", "0.05", "0.1", "0.2", "0.5")

LATENCIES = (
    ("Time to first token", "kwasi_time_to_first_token_seconds", "Request arrival to the first generated token."),
    ("Inter-token latency", "kwasi_inter_token_latency_seconds", "Gap between two consecutive tokens (per token)."),
    ("Time per output token", "kwasi_time_per_output_token_seconds",
     "Per request: (last token - first token) / (generated tokens - 1)."),
    ("End-to-end latency", "kwasi_e2e_request_latency_seconds", "Request arrival to the end of the response."),
    ("Queue time", "kwasi_request_queue_time_seconds", "Time a request waited for a free guest slot."),
    ("Prefill time", "kwasi_request_prefill_time_seconds",
     "The first compute_single of a generation: prompt evaluation and the first sample."),
)


def latency(title: str, histogram: str, what: str) -> Panel:
    queries = [Query(MODELS.quantile(q, histogram), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)]
    queries.append(Query(MODELS.mean(histogram), "mean"))
    return timeseries(title, f"{what} p50, p95, p99 and the mean over the rate window.", "s", queries, width=8)


def requests_per_s() -> str:
    return MODELS.sum_rate("kwasi_requests_total")


def share_of_requests(status: str) -> str:
    return guarded(MODELS.sum_rate("kwasi_requests_total", f'status=~"{status}"'), requests_per_s())


def dashboard() -> Obj:
    variables = runtime.variables()
    variables += [
        custom_variable("ttft_slo", "TTFT SLO (s)", TTFT_SLOS, "1.0",
                        "Target time to first token; the choices are histogram bucket boundaries."),
        custom_variable("tpot_slo", "TPOT SLO (s)", TPOT_SLOS, "0.1",
                        "Target time per output token; the choices are histogram bucket boundaries."),
    ]
    b = Board(UID, "kwasi / Overview", "Traffic, latency, saturation and errors of kwasi-runtime pods.", variables)

    b.row("Traffic and errors")
    b.add(
        stat("Requests / s", "Finished requests per second, every status.", "reqps", [Query(requests_per_s())]),
        stat("Server error ratio", "Share of requests answered with a 5xx status.", "percentunit",
             [Query(share_of_requests("5.."))], thresholds=((None, "green"), (0.01, "orange"), (0.05, "red"))),
        stat("Rejected (429) ratio", "Share of requests refused because the queue was full (--max-queue).",
             "percentunit", [Query(share_of_requests("429"))],
             thresholds=((None, "green"), (0.01, "orange"), (0.05, "red"))),
        stat("Input tokens / s", "Prompt tokens processed per second.", "count:tok/s",
             [Query(MODELS.sum_rate("kwasi_prompt_tokens_total"))]),
        stat("Output tokens / s", "Tokens generated per second (end of generation included).", "count:tok/s",
             [Query(MODELS.sum_rate("kwasi_generation_tokens_total"))]),
        stat("Targets down", "Runtime scrape targets whose last scrape failed (up == 0).", "short",
             [Query(runtime.targets_down())], thresholds=((None, "green"), (1, "red"))),
    )
    b.add(
        stat("TTFT p95", "95th percentile time to first token.", "s",
             [Query(MODELS.quantile(0.95, "kwasi_time_to_first_token_seconds"))]),
        stat("ITL p95", "95th percentile gap between two tokens.", "s",
             [Query(MODELS.quantile(0.95, "kwasi_inter_token_latency_seconds"))]),
        stat("E2E p95", "95th percentile request latency.", "s",
             [Query(MODELS.quantile(0.95, "kwasi_e2e_request_latency_seconds"))]),
        stat("TTFT SLO attainment", "Share of requests in the time range whose first token came within the "
             "TTFT SLO variable.", "percentunit",
             [Query(MODELS.share_below("kwasi_time_to_first_token_seconds", "$ttft_slo", "$__range"), instant=True)],
             thresholds=((None, "red"), (0.9, "orange"), (0.99, "green"))),
        stat("TPOT SLO attainment", "Share of requests in the time range whose time per output token was within "
             "the TPOT SLO variable.", "percentunit",
             [Query(MODELS.share_below("kwasi_time_per_output_token_seconds", "$tpot_slo", "$__range"),
                    instant=True)],
             thresholds=((None, "red"), (0.9, "orange"), (0.99, "green"))),
        stat("Longest stall p99", "99th percentile of each stream's longest gap between two tokens.", "s",
             [Query(MODELS.quantile(0.99, "kwasi_stream_max_stall_seconds"))]),
    )

    b.row("Requests")
    b.add(
        timeseries("Requests by status", "Finished requests per second by HTTP status (499: the client left).",
                   "reqps", [Query(MODELS.sum_rate("kwasi_requests_total", by=("status",)), "{{status}}")],
                   stack=True),
        timeseries("Finish reasons", "Finished requests per second by finish reason (stop, length, abort, error).",
                   "reqps", [Query(MODELS.sum_rate("kwasi_requests_total", by=("finish_reason",)),
                                   "{{finish_reason}}")], stack=True),
        timeseries("Tokens / s", "Prompt tokens processed and tokens generated per second.", "count:tok/s", [
            Query(MODELS.sum_rate("kwasi_prompt_tokens_total"), "input"),
            Query(MODELS.sum_rate("kwasi_generation_tokens_total"), "output")]),
        timeseries("Guest traps", "Guest runs that ended in a trap per second, by reason (interrupt: the "
                   "--timeout deadline).", "ops",
                   [Query(MODELS.sum_rate("kwasi_guest_traps_total", by=("reason",)), "{{reason}}")], stack=True),
    )

    b.row("Latency")
    b.add(*(latency(*spec) for spec in LATENCIES))

    b.row("Saturation")
    kv = "kwasi_kv_cache_usage_ratio"
    b.add(
        timeseries("Running and waiting", "Requests whose guest runs, and requests queued for a guest slot.",
                   "short", [Query(f"sum({MODELS.sel('kwasi_requests_running')})", "running"),
                             Query(f"sum({MODELS.sel('kwasi_requests_waiting')})", "waiting")], width=8),
        timeseries("KV cache usage", "Share of KV-cache positions holding tokens: highest, mean and lowest pod.",
                   "percentunit", [Query(f"max({MODELS.sel(kv)})", "max"), Query(f"avg({MODELS.sel(kv)})", "mean"),
                                   Query(f"min({MODELS.sel(kv)})", "min")], width=8),
        timeseries("KV cache tokens", "Tokens held in KV caches and the positions allocated, summed over pods.",
                   "short", [Query(f"sum({MODELS.sel('kwasi_kv_cache_usage_tokens')})", "held"),
                             Query(f"sum({MODELS.sel('kwasi_kv_cache_capacity_tokens')})", "capacity")], width=8),
        timeseries("Longest stall per stream", "Each stream's longest gap between two tokens: p50, p99, mean.",
                   "s", [Query(MODELS.quantile(0.5, "kwasi_stream_max_stall_seconds"), "p50"),
                         Query(MODELS.quantile(0.99, "kwasi_stream_max_stall_seconds"), "p99"),
                         Query(MODELS.mean("kwasi_stream_max_stall_seconds"), "mean")], width=8),
        timeseries("Tokens per request", "Prompt and generated tokens per generation, p50 and p95.", "short", [
            Query(MODELS.quantile(0.5, "kwasi_request_prompt_tokens"), "prompt p50"),
            Query(MODELS.quantile(0.95, "kwasi_request_prompt_tokens"), "prompt p95"),
            Query(MODELS.quantile(0.5, "kwasi_request_generation_tokens"), "generated p50"),
            Query(MODELS.quantile(0.95, "kwasi_request_generation_tokens"), "generated p95")], width=8),
        timeseries("Targets down", "Runtime scrape targets whose last scrape failed (up == 0).", "short",
                   [Query(runtime.targets_down(), "down"), Query(f"count({PODS.sel('up')})", "targets")], width=8),
    )
    return b.json()
