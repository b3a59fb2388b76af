"""/metrics: exact relationships between a known request and the counters and histograms it moves."""

from __future__ import annotations

import openai
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from kwasi_runtime.serve.metrics import LATENCY_BUCKETS, Metrics
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
        "kwasi_kv_cache_usage_ratio": "gauge", "kwasi_generation_tokens_per_second": "gauge",
        "kwasi_model_load_seconds": "gauge", "kwasi_gpu_memory_allocated_bytes": "gauge",
        "kwasi_gpu_memory_reserved_bytes": "gauge",
    }
    assert {n: f.type for n, f in families.items()} == expected
    e2e = families["kwasi_e2e_request_latency_seconds"]
    bounds = sorted({float(sm.labels["le"]) for sm in e2e.samples if sm.name.endswith("_bucket")})
    assert bounds[0] == 0.001 and bounds[-2] == 80.0 and bounds[-1] == float("inf")
    allowed = {"model", "module", "le", "status", "finish_reason", "reason"}
    assert all(set(sm.labels) <= allowed for f in families.values() for sm in f.samples)


def test_bucket_lists_cover_1ms_to_80s() -> None:
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 80.0
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))
    Metrics()  # a second registry does not clash with the first
