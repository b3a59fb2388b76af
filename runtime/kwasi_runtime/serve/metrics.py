"""Every Prometheus metric `kwasi-runtime serve` exports, defined in this one module.

Names carry the `kwasi_` prefix and their unit (`_seconds`, `_tokens`, `_bytes`, `_ratio`); labels are `model`
and `module` (plus the bounded `status`, `finish_reason` and `reason` on the counters that need them), never
per-request values. Bucket lists are fixed here so dashboards and alerts can rely on them (the chart's SLO
choices are boundaries of LATENCY_BUCKETS). Every series a server can produce for its models and guests exists
from start-up (`Metrics.declare`), so a gauge reads 0 rather than nothing before the first request, and the
first event of a counter shows up in `rate()` (Prometheus sees no increase in a series' first sample).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from kwasi_runtime.nn.backend_api import KvCacheUsage

# `_created` timestamps double the series count and no dashboard here uses them (process-wide switch).
disable_created_metrics()  # type: ignore[no-untyped-call]

# 1 ms … 1 h: from a cached-prefix TTFT on a GPU to a request that waited in the queue and then ran into the
# guest deadline (serve's --timeout, 300 s by default): every latency a server allows lands in a finite bucket.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 80.0,
    120.0, 180.0, 240.0, 300.0, 420.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0,
)
# Instantiating a sandbox from an InstancePre costs tens of microseconds (bench/boundary.py prints it): resolve
# that, then the same ladder.
SANDBOX_BUCKETS: tuple[float, ...] = (0.00005, 0.0001, 0.00025, 0.0005, *LATENCY_BUCKETS)
TOKEN_COUNT_BUCKETS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000,
)

LABELS = ("model", "module")
FINISH_REASONS = ("stop", "length", "abort", "error")
# (status, finish_reason) pairs declared at start-up: success, truncation, queue full, client gone, failure.
COMMON_OUTCOMES = (("200", "stop"), ("200", "length"), ("429", "abort"), ("499", "abort"), ("500", "error"))
# Trap reasons declared at start-up: the deadline (epoch interrupt), fuel, a guest abort, anything else.
COMMON_TRAPS = ("interrupt", "out_of_fuel", "unreachable", "error")
TOKEN_RATE_WINDOW_S = 10.0


class Metrics:
    """One set of metrics on its own registry (a server per test must not see another's counts)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=r)

        self.time_to_first_token = hist(
            "kwasi_time_to_first_token_seconds", "Request arrival to the first generated token.", LATENCY_BUCKETS)
        self.inter_token_latency = hist(
            "kwasi_inter_token_latency_seconds", "Time between two consecutive tokens of a stream (per token).",
            LATENCY_BUCKETS)
        self.time_per_output_token = hist(
            "kwasi_time_per_output_token_seconds",
            "Per request: (last token - first token) / (generated tokens - 1).", LATENCY_BUCKETS)
        self.e2e_latency = hist(
            "kwasi_e2e_request_latency_seconds", "Request arrival to the end of the response.", LATENCY_BUCKETS)
        self.queue_time = hist(
            "kwasi_request_queue_time_seconds", "Time a request waited for a free guest slot.", LATENCY_BUCKETS)
        self.prefill_time = hist(
            "kwasi_request_prefill_time_seconds",
            "The first compute_single of a generation: prompt evaluation and the first sample.", LATENCY_BUCKETS)
        self.instantiate_time = hist(
            "kwasi_guest_instantiate_seconds", "Fresh Store + WASI setup + instantiation of the guest.",
            SANDBOX_BUCKETS)
        self.max_stall = hist(
            "kwasi_stream_max_stall_seconds", "Longest gap between two tokens of one stream.", LATENCY_BUCKETS)
        self.prompt_length = hist(
            "kwasi_request_prompt_tokens", "Prompt length per generation.", TOKEN_COUNT_BUCKETS)
        self.generation_length = hist(
            "kwasi_request_generation_tokens", "Generated tokens per generation (end of generation included).",
            TOKEN_COUNT_BUCKETS)

        self.prompt_tokens = Counter("kwasi_prompt_tokens", "Prompt tokens processed.", LABELS, registry=r)
        self.generation_tokens = Counter(
            "kwasi_generation_tokens", "Tokens generated (end of generation included).", LABELS, registry=r)
        self.requests = Counter(
            "kwasi_requests", "Finished requests by HTTP status and finish reason (stop/length/abort/error).",
            (*LABELS, "status", "finish_reason"), registry=r)
        self.guest_traps = Counter(
            "kwasi_guest_traps", "Guest runs that ended in a trap, by reason.", (*LABELS, "reason"), registry=r)

        self.requests_running = Gauge(
            "kwasi_requests_running", "Requests whose guest is running.", LABELS, registry=r)
        self.requests_waiting = Gauge(
            "kwasi_requests_waiting", "Requests queued for a guest slot.", LABELS, registry=r)
        self.kv_cache_tokens = Gauge(
            "kwasi_kv_cache_usage_tokens", "KV-cache positions holding a generating stream's keys and values.",
            ("model",), registry=r)
        self.kv_cache_capacity = Gauge(
            "kwasi_kv_cache_capacity_tokens", "KV-cache positions allocated for streams (slots x context length).",
            ("model",), registry=r)
        self.kv_cache_usage = Gauge(
            "kwasi_kv_cache_usage_ratio", "kwasi_kv_cache_usage_tokens / kwasi_kv_cache_capacity_tokens, 0-1.",
            ("model",), registry=r)
        self.tokens_per_second = Gauge(
            "kwasi_generation_tokens_per_second", f"Generated tokens per second over the last "
            f"{TOKEN_RATE_WINDOW_S:g} s.", ("model",), registry=r)
        self.model_load = Gauge("kwasi_model_load_seconds", "Time to load a named model at start-up.", ("model",),
                                registry=r)
        self.model_load_failures = Counter(
            "kwasi_model_load_failures", "Start-up loads of a named model that failed (the server then exits).",
            ("model",), registry=r)
        # One process serves from its visible GPUs; the sum over them is what the pod's limit is about.
        self.gpu_allocated = Gauge("kwasi_gpu_memory_allocated_bytes",
                                   "torch.cuda.memory_allocated summed over devices (0 without CUDA).",
                                   registry=r)
        self.gpu_reserved = Gauge("kwasi_gpu_memory_reserved_bytes",
                                  "torch.cuda.memory_reserved summed over devices (0 without CUDA).",
                                  registry=r)

        self._rates: dict[str, TokenRate] = {}
        self._rates_lock = threading.Lock()
        # model name -> its KV cache now; set by the server for models whose backend has one.
        self.kv_usage_sources: dict[str, Callable[[], KvCacheUsage | None]] = {}

    def declare(self, model: str, module: str) -> None:
        """Creates every series of a (model, module) pair at 0: what a server can report exists before it does."""
        labels = {"model": model, "module": module}
        for family in (self.time_to_first_token, self.inter_token_latency, self.time_per_output_token,
                       self.e2e_latency, self.queue_time, self.prefill_time, self.instantiate_time, self.max_stall,
                       self.prompt_length, self.generation_length, self.prompt_tokens, self.generation_tokens,
                       self.requests_running, self.requests_waiting):
            family.labels(**labels)
        for status, reason in COMMON_OUTCOMES:
            self.requests.labels(**labels, status=status, finish_reason=reason)
        for trap in COMMON_TRAPS:
            self.guest_traps.labels(**labels, reason=trap)

    def declare_model(self, model: str) -> None:
        self.model_load_failures.labels(model=model)
        self.tokens_per_second.labels(model=model)

    def token_rate(self, model: str) -> TokenRate:
        with self._rates_lock:
            rate = self._rates.get(model)
            if rate is None:
                rate = self._rates[model] = TokenRate(TOKEN_RATE_WINDOW_S)
            return rate

    def refresh(self) -> None:
        """Sets the gauges that are computed rather than counted; called right before each scrape."""
        now = time.monotonic()
        with self._rates_lock:
            rates = dict(self._rates)
        for model, rate in rates.items():
            self.tokens_per_second.labels(model=model).set(rate.per_second(now))
        for model, source in self.kv_usage_sources.items():
            usage = source()
            if usage is None:
                continue
            self.kv_cache_tokens.labels(model=model).set(usage.tokens)
            self.kv_cache_capacity.labels(model=model).set(usage.capacity_tokens)
            self.kv_cache_usage.labels(model=model).set(min(1.0, max(0.0, usage.ratio)))
        torch = sys.modules.get("torch")  # never import torch just to learn there is no GPU
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            devices = range(torch.cuda.device_count())
            self.gpu_allocated.set(sum(torch.cuda.memory_allocated(i) for i in devices))
            self.gpu_reserved.set(sum(torch.cuda.memory_reserved(i) for i in devices))

    def exposition(self) -> bytes:
        self.refresh()
        return generate_latest(self.registry)


class TokenRate:
    """Token timestamps over a sliding window; appended from guest threads, read at scrape time."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def add(self, when: float) -> None:
        with self._lock:
            self._times.append(when)

    def per_second(self, now: float) -> float:
        with self._lock:
            while self._times and self._times[0] < now - self.window_s:
                self._times.popleft()
            return len(self._times) / self.window_s


# A unary NNRPC call over a unix socket takes ~100 µs: the sandbox ladder's sub-millisecond steps fit it too.
RPC_BUCKETS = SANDBOX_BUCKETS


class RpcMetrics:
    """What `kwasi-runtime nn-rpc-server` exports beside `Metrics` (same registry, same conventions)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.calls = Counter("kwasi_nnrpc_calls", "NNRPC calls by method (a Generate stream counts once).",
                             ("method",), registry=r)
        self.errors = Counter(
            "kwasi_nnrpc_errors", "Failed NNRPC calls by method and code: the wasi-nn errno's name, or the gRPC "
            "status without one (end_of_sequence, a stream's normal end, is not counted).", ("method", "code"),
            registry=r)
        self.latency = Histogram(
            "kwasi_nnrpc_call_duration_seconds", "Server time per NNRPC call by method (a Generate stream: all of "
            "it).", ("method",), buckets=RPC_BUCKETS, registry=r)
        self.sessions = Gauge("kwasi_nnrpc_sessions", "Client sessions held (kwasi sessions and anonymous ones).",
                              registry=r)
