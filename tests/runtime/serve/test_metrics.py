"""/metrics: exact relationships between a known request and the counters and histograms it moves."""

from __future__ import annotations

import asyncio
import http.client
import threading
import time

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from kwasi_runtime.nn.abi import Errno, NNError
from kwasi_runtime.nn.backend_api import Graph, NamedModel
from kwasi_runtime.serve.cli import DEFAULT_TIMEOUT_S
from kwasi_runtime.serve.config import ServeConfig
from kwasi_runtime.serve.metrics import COMMON_OUTCOMES, LATENCY_BUCKETS, Metrics
from kwasi_runtime.serve.server import Server
from kwasi_testing.guests import built_guest
from kwasi_testing.models import host_with
from kwasi_testing.net import free_port
from kwasi_testing.serving import ANSWER, ScriptedTokens, ServerThread, request

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
LABELS = {"model": "default", "module": "openai_chat"}


def test_one_streamed_request_moves_every_metric_by_a_known_amount() -> None:
    s = ServerThread(ScriptedTokens(delay_s=0.01))
    try:
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0) as client:
            before = {n: s.sample(n, **LABELS) for n in (
                "kwasi_time_to_first_token_seconds_count", "kwasi_inter_token_latency_seconds_count",
                "kwasi_generation_tokens_total", "kwasi_prompt_tokens_total")}
            chunks = list(client.chat.completions.create(
                model="default", messages=QUESTION, stream=True,
                stream_options={"include_usage": True}))
        usage = chunks[-1].usage
        assert usage is not None
        s.wait_idle()
        after = {n: s.sample(n, **LABELS) for n in before}
        assert after["kwasi_time_to_first_token_seconds_count"] == before["kwasi_time_to_first_token_seconds_count"] + 1
        assert after["kwasi_generation_tokens_total"] - before["kwasi_generation_tokens_total"] == \
            usage.completion_tokens
        assert after["kwasi_prompt_tokens_total"] - before["kwasi_prompt_tokens_total"] == usage.prompt_tokens
        # One gap per token after the first (the end-of-generation step included).
        assert after["kwasi_inter_token_latency_seconds_count"] - before["kwasi_inter_token_latency_seconds_count"] \
            == usage.completion_tokens - 1
        for name in ("kwasi_e2e_request_latency_seconds", "kwasi_request_queue_time_seconds",
                     "kwasi_guest_instantiate_seconds", "kwasi_time_per_output_token_seconds",
                     "kwasi_request_prefill_time_seconds", "kwasi_stream_max_stall_seconds"):
            assert s.sample(f"{name}_count", **LABELS) == 1, name
        assert s.sample("kwasi_request_generation_tokens_sum", **LABELS) == len(ANSWER) + 1
        assert s.sample("kwasi_requests_total", **LABELS, status="200", finish_reason="stop") == 1
        # 12 tokens 10 ms apart: TPOT and the longest stall are about 10 ms; TTFT at least one step.
        tpot = s.sample("kwasi_time_per_output_token_seconds_sum", **LABELS)
        assert 0.009 < tpot < 0.1
        assert s.sample("kwasi_stream_max_stall_seconds_sum", **LABELS) >= tpot
        assert s.sample("kwasi_time_to_first_token_seconds_sum", **LABELS) >= 0.01
        assert s.sample("kwasi_requests_running", **LABELS) == 0
        assert s.sample("kwasi_requests_waiting", **LABELS) == 0
        assert s.sample("kwasi_generation_tokens_per_second", model="default") == 0  # not yet scraped
        s.metrics.refresh()
        assert s.sample("kwasi_generation_tokens_per_second", model="default") == (len(ANSWER) + 1) / 10
        assert s.sample("kwasi_model_load_seconds", model="default") >= 0
    finally:
        s.stop()


def test_finish_reasons_length_and_error() -> None:
    s = ServerThread(ScriptedTokens())
    try:
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0) as client:
            client.chat.completions.create(model="default", messages=QUESTION, max_tokens=2)
        request(s.url, "POST", "/v1/chat/completions", body=b"{")
        s.wait_idle()
        assert s.sample("kwasi_requests_total", **LABELS, status="200", finish_reason="length") == 1
        assert s.sample("kwasi_requests_total", model="", module="openai_chat", status="400",
                        finish_reason="error") == 1
    finally:
        s.stop()


def test_a_prompt_refused_before_its_first_token_counts_no_tokens() -> None:
    s = ServerThread(ScriptedTokens(ctx_tokens=3))
    try:
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0) as client, \
                pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="default", messages=QUESTION)
        s.wait_idle()
        assert s.sample("kwasi_requests_total", **LABELS, status="400", finish_reason="error") == 1
        for name in ("kwasi_prompt_tokens_total", "kwasi_generation_tokens_total", "kwasi_request_prompt_tokens_count",
                     "kwasi_time_to_first_token_seconds_count"):
            assert s.sample(name, **LABELS) == 0, name
    finally:
        s.stop()


def test_exposition_names_units_and_buckets(server: ServerThread) -> None:
    request(server.url, path="/x")
    reply = request(server.url, path="/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    kwasi = {n for n in families if n.startswith("kwasi_")}
    assert kwasi == {n for n in families}  # a private registry: nothing but ours
    expected = {
        "kwasi_time_to_first_token_seconds": "histogram", "kwasi_inter_token_latency_seconds": "histogram",
        "kwasi_time_per_output_token_seconds": "histogram", "kwasi_e2e_request_latency_seconds": "histogram",
        "kwasi_request_queue_time_seconds": "histogram", "kwasi_request_prefill_time_seconds": "histogram",
        "kwasi_guest_instantiate_seconds": "histogram", "kwasi_stream_max_stall_seconds": "histogram",
        "kwasi_request_prompt_tokens": "histogram", "kwasi_request_generation_tokens": "histogram",
        "kwasi_prompt_tokens": "counter", "kwasi_generation_tokens": "counter", "kwasi_requests": "counter",
        "kwasi_guest_traps": "counter", "kwasi_requests_running": "gauge", "kwasi_requests_waiting": "gauge",
        "kwasi_kv_cache_usage_ratio": "gauge", "kwasi_kv_cache_usage_tokens": "gauge",
        "kwasi_kv_cache_capacity_tokens": "gauge", "kwasi_generation_tokens_per_second": "gauge",
        "kwasi_model_load_seconds": "gauge", "kwasi_model_load_failures": "counter",
        "kwasi_gpu_memory_allocated_bytes": "gauge",
        "kwasi_gpu_memory_reserved_bytes": "gauge",
    }
    assert {n: f.type for n, f in families.items()} == expected
    e2e = families["kwasi_e2e_request_latency_seconds"]
    bounds = sorted({float(sm.labels["le"]) for sm in e2e.samples if sm.name.endswith("_bucket")})
    assert bounds[0] == 0.001 and bounds[-2] == LATENCY_BUCKETS[-1] and bounds[-1] == float("inf")
    allowed = {"model", "module", "le", "status", "finish_reason", "reason"}
    assert all(set(sm.labels) <= allowed for f in families.values() for sm in f.samples)


def test_latency_buckets_reach_past_the_longest_request_the_server_allows() -> None:
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))
    assert LATENCY_BUCKETS[0] == 0.001
    # A guest may run until --timeout after waiting in the queue: the deadline is a boundary (a request cut by
    # it is told apart from one just under it) and there is room above it for the wait.
    assert DEFAULT_TIMEOUT_S in LATENCY_BUCKETS
    assert LATENCY_BUCKETS[-1] >= 10 * DEFAULT_TIMEOUT_S
    Metrics()  # a second registry does not clash with the first


def test_request_cut_by_the_deadline_lands_in_a_finite_bucket() -> None:
    s = ServerThread(ScriptedTokens(endless=True, delay_s=0.01), timeout_s=0.5)
    try:
        # Headers are out when the deadline hits: the body ends short (an incomplete chunked response).
        with pytest.raises(http.client.IncompleteRead):
            request(s.url, "POST", "/v1/chat/completions",
                    body=b'{"model": "default", "messages": [{"role": "user", "content": "hi"}]}')
        s.wait_idle()
        count = s.sample("kwasi_e2e_request_latency_seconds_count", **LABELS)
        assert count == 1
        assert s.sample("kwasi_e2e_request_latency_seconds_bucket", **LABELS, le="1.0") == 1
        assert s.sample("kwasi_guest_traps_total", **LABELS, reason="interrupt") == 1
    finally:
        s.stop()


def test_every_series_exists_from_start_up(model: ScriptedTokens) -> None:
    """Before the first request: gauges read 0 and counters start at 0, for the chat and the WAGI guest."""
    s = ServerThread(model)
    try:
        families = {f.name: f for f in text_string_to_metric_families(request(s.url, path="/metrics").body.decode())}

        def value(name: str, family: str, **labels: str) -> float | None:
            return next((sm.value for sm in families[family].samples if sm.name == name and sm.labels == labels),
                        None)

        for labels in (LABELS, {"model": "", "module": "openai_chat"}, {"model": "", "module": "wagi_echo"}):
            assert value("kwasi_requests_running", "kwasi_requests_running", **labels) == 0, labels
            assert value("kwasi_requests_waiting", "kwasi_requests_waiting", **labels) == 0, labels
            assert value("kwasi_time_to_first_token_seconds_count", "kwasi_time_to_first_token_seconds",
                         **labels) == 0
            for status, reason in COMMON_OUTCOMES:
                assert value("kwasi_requests_total", "kwasi_requests", **labels, status=status,
                             finish_reason=reason) == 0
        assert value("kwasi_model_load_failures_total", "kwasi_model_load_failures", model="default") == 0
        assert value("kwasi_generation_tokens_per_second", "kwasi_generation_tokens_per_second", model="default") == 0
    finally:
        s.stop()


def test_wagi_guest_running_gauge_returns_to_zero(server: ServerThread) -> None:
    """The gauge is decremented under the labels it was incremented with, even if the guest named a model."""
    assert request(server.url, path="/x").status == 200
    server.wait_idle()
    metrics = server.metrics.registry
    running = [sm for m in metrics.collect() if m.name == "kwasi_requests_running" for sm in m.samples]
    assert running and all(sm.value == 0 for sm in running)


class BrokenModel(NamedModel):
    def graph(self, config: bytes | None) -> Graph:
        raise NNError(Errno.MODEL_NOT_FOUND, "no such file: /models/missing.gguf")


def test_failed_model_load_is_counted_and_scrapeable_before_exit() -> None:
    metrics = Metrics()
    port = free_port()
    config = ServeConfig(port=port, chat_module=built_guest("openai_chat"), failure_linger_s=3.0)
    server = Server(config, host_with(default=BrokenModel()), metrics)
    seen: dict[str, str] = {}

    def scrape() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "metrics" not in seen:
            try:
                body = request(f"http://127.0.0.1:{port}", path="/metrics", timeout=2).body.decode()
                if "kwasi_model_load_failures_total{model=\"default\"} 1.0" in body:
                    seen["metrics"] = body
                    seen["readyz"] = request(f"http://127.0.0.1:{port}", path="/readyz", timeout=2).body.decode()
            except OSError:
                pass
            time.sleep(0.05)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    started = time.monotonic()
    code = asyncio.run(server.serve_until_signal())
    scraper.join()
    assert code == 1
    assert time.monotonic() - started >= 3.0  # it stayed up for the linger
    assert "metrics" in seen, "the failure counter was never scraped"
    assert seen["readyz"].startswith("not ready: start-up failed") and "missing.gguf" in seen["readyz"]
