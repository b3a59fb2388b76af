"""The server's /metrics: serve's metric names for tokens and KV cache, plus calls, errors and latency by method."""

from __future__ import annotations

import contextlib
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from kwasi_runtime.nn.abi import NNError, TensorType
from kwasi_runtime.nn.backend_api import Tensor
from kwasi_testing.nnrpc import client_host, preload_host, rpc_server


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return reply.status, reply.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_name_tokens_kv_cache_and_every_method(tmp_path: Path, scripted_gguf: Path) -> None:
    host = preload_host(f"default:GGML:CPU:{scripted_gguf}")
    with rpc_server(host, f"unix://{tmp_path}/m.sock", metrics_address="127.0.0.1:0", max_concurrency=2) as server:
        assert scrape(server.metrics_port, "/readyz") == (200, "ready\n")
        client = client_host(server.config.uri)
        model = client.models.get("default")
        assert model is not None
        ctx = model.graph(b'{"temp": 0}').init_execution_context()
        ctx.set_input(0, Tensor((1,), TensorType.U8, b"A"))
        tokens = 0
        try:
            while True:
                ctx.compute_single()
                tokens += 1
        except NNError:
            pass
        ctx.fini_single()
        missing = client.models.get("nope")
        assert missing is not None
        with contextlib.suppress(NNError):
            missing.graph(None)
        status, text = scrape(server.metrics_port)
        got = samples(text)

        def value(name: str, **labels: str) -> float:
            return got.get((name, frozenset(labels.items())), 0.0)

        assert status == 200 and tokens == 5
        for method in ("LoadByNameWithConfig", "InitExecutionContext", "SetInput", "Generate", "FiniSingle", "Open"):
            assert value("kwasi_nnrpc_calls_total", method=method) >= 1, method
        assert value("kwasi_nnrpc_errors_total", method="LoadByName", code="not_found") == 1
        assert value("kwasi_nnrpc_call_duration_seconds_count", method="SetInput") == 1
        assert value("kwasi_nnrpc_sessions") == 1
        labels = {"model": "default", "module": "nnrpc"}
        assert value("kwasi_generation_tokens_total", **labels) == 6  # end of generation included
        assert value("kwasi_prompt_tokens_total", **labels) == 1
        assert value("kwasi_time_to_first_token_seconds_count", **labels) == 1
        assert value("kwasi_inter_token_latency_seconds_count", **labels) == 5
        assert value("kwasi_model_load_seconds", model="default") > 0
        assert ("kwasi_kv_cache_usage_ratio", frozenset({("model", "default")})) in got
        client.models.close()
