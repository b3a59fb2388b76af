"""--vllm-metrics: vLLM's names and `model_name` label beside kwasi's own, from start-up, with equal values."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from kwasi_runtime.serve.vllm_metrics import COUNTERS, GAUGES, HISTOGRAMS
from kwasi_testing.serving import ScriptedTokens, ServerThread, request

CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def scrape(s: ServerThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = request(s.url, path="/metrics").body.decode()
    return {(sm.name, tuple(sorted(sm.labels.items()))): sm.value
            for family in text_string_to_metric_families(text) for sm in family.samples}


def test_vllm_names_from_start_up_and_after_a_request() -> None:
    s = ServerThread(ScriptedTokens(), vllm_metrics=True)
    try:
        before = scrape(s)
        model = (("model_name", "default"),)
        for name in GAUGES:  # the endpoint picker and KEDA read these before any traffic
            assert before[(name, model)] == 0, name
        for name in COUNTERS:
            assert before[(name + "_total", model)] == 0, name
        assert request(s.url, "POST", "/v1/chat/completions", body=json.dumps(CHAT).encode()).status == 200
        s.wait_idle()
        after = scrape(s)
        kwasi = (("model", "default"), ("module", "openai_chat"))
        assert after[("vllm:generation_tokens_total", model)] == after[("kwasi_generation_tokens_total", kwasi)] > 0
        assert after[("vllm:prompt_tokens_total", model)] == after[("kwasi_prompt_tokens_total", kwasi)] > 0
        assert after[("vllm:request_success_total", (("finished_reason", "stop"), *model))] == 1
        for name, source in HISTOGRAMS.items():
            assert after[(name + "_count", model)] == after[(source + "_count", kwasi)], name
        assert after[("vllm:time_to_first_token_seconds_count", model)] == 1
    finally:
        s.stop()


def test_off_by_default(server: ServerThread) -> None:
    assert "vllm:" not in request(server.url, path="/metrics").body.decode()
