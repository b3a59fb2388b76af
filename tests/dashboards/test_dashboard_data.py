"""Every panel of the runtime dashboards returns data from a real Prometheus that scraped a real
`kwasi-runtime serve` under a bounded load from the official openai client.

The model is a tiny random-weight llama GGUF through the real LLM backend (real tokens, a real KV cache);
`KWASI_DASHBOARD_MODEL=smollm2` uses SmolLM2 instead (what `make docs-picture` does for the README's picture).
DCGM panels are the only ones allowed to be empty, and only where torch sees no GPU.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kwasi_dashboards import catalog
from kwasi_dashboards.boards import gpu, instances, overview
from kwasi_dashboards.evaluate import Choice, Prometheus, TargetResult, Window, evaluate
from kwasi_dashboards.render import render
from kwasi_runtime.serve.metrics import LATENCY_BUCKETS
from kwasi_testing.gguf_models import random_llama_gguf
from kwasi_testing.models import smollm2_gguf
from kwasi_testing.prometheus import PrometheusServer, Target, binaries
from kwasi_testing.traffic import Load, LoadReport, RuntimeProcess

SCRAPE_S = 1.0
TARGET_LABELS = {"namespace": "kwasi-test", "wasminference": "chat", "pod": "chat-0"}
RUNTIME_BOARDS = (overview.UID, instances.UID, gpu.UID)


@dataclass
class Scraped:
    prom: Prometheus
    window: Window
    report: LoadReport
    before_load: float  # a time with a scrape taken before any request
    settled: float  # a time by which every request of the load has been scraped


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    bins = binaries()
    smollm2 = os.environ.get("KWASI_DASHBOARD_MODEL") == "smollm2"
    if smollm2:
        model, load = smollm2_gguf(), {"max_tokens": 24, "long_prompt_words": 300, "too_long_words": 5000}
    else:
        model = tmp_path_factory.mktemp("tiny") / "random.gguf"
        random_llama_gguf(model, seed=7)
        load = {"max_tokens": 24, "long_prompt_words": 40, "too_long_words": 400}
    runtime = RuntimeProcess(model)
    server = None
    try:
        server = PrometheusServer(bins.prometheus, [Target("kwasi-runtime", runtime.address, TARGET_LABELS)],
                                  scrape_s=SCRAPE_S)
        server.targets_up(1)
        server.wait_scrapes(2)
        before = time.time() - SCRAPE_S
        start = before - SCRAPE_S
        traffic = Load(runtime.url, max_tokens=int(load["max_tokens"]))
        report = traffic.run(rounds=int(os.environ.get("KWASI_DASHBOARD_ROUNDS", "3")),
                             long_prompt_words=int(load["long_prompt_words"]),
                             too_long_words=int(load["too_long_words"]))
        load_end = time.time()
        server.wait_scrapes(3)
        # The window ends with the load, as a dashboard looked at while traffic flows.
        yield Scraped(Prometheus(server.url), Window(start, load_end + SCRAPE_S, SCRAPE_S), report, before,
                      time.time())
    finally:
        if server is not None:
            server.stop()
        runtime.stop()


def board(uid: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(catalog.path(uid).read_text())
    return loaded


def excepted(result: TargetResult) -> bool:
    """DCGM panels on a machine without a GPU (there is no exporter to scrape)."""
    return not torch.cuda.is_available() and "DCGM_" in result.expr and "kwasi_" not in result.expr


@pytest.mark.parametrize("choice", ["all", "first"])
@pytest.mark.parametrize("uid", RUNTIME_BOARDS)
def test_every_panel_has_data(scraped: Scraped, uid: str, choice: Choice) -> None:
    results = evaluate(board(uid), scraped.prom, scraped.window, choice)
    assert results
    empty = [r for r in results if not r.has_data and not excepted(r)]
    assert not empty, f"{len(empty)} of {len(results)} queries without data:\n" + "\n".join(map(str, empty))
    if uid == gpu.UID and not torch.cuda.is_available():
        assert any(excepted(r) for r in results)  # the exception covers the DCGM panels, and nothing else
        assert all(r.has_data for r in results if "kwasi_" in r.expr)


def instant(s: Scraped, expr: str, at: float | None = None) -> dict[str, float]:
    """{label values joined: value} of an instant query."""
    out = {}
    for series in s.prom.query(expr, s.window.end if at is None else at):
        out[",".join(series["metric"].values())] = float(series["value"][1])
    return out


def test_prometheus_holds_what_the_client_saw(scraped: Scraped) -> None:
    """Counters are declared at 0 before the first request, so the last value is the whole load."""
    seen = instant(scraped, 'sum by (status) (kwasi_requests_total{model="default"})', at=scraped.settled)
    statuses = scraped.report.statuses
    assert statuses[429] > 0 and statuses[400] > 0 and statuses[200] > 0
    assert seen["429"] == statuses[429]
    assert seen["400"] == statuses[400]  # the prompt that does not fit the context
    # A client that hangs up races the end of its generation: a guest already done makes it a 200.
    assert seen["200"] + seen["499"] == statuses[200] + statuses[499]
    assert seen["499"] >= 1
    generated = instant(scraped, 'sum(kwasi_generation_tokens_total{model="default"})', at=scraped.settled)[""]
    assert generated >= scraped.report.completion_tokens > 0  # aborted streams generated tokens too


def test_values_are_sane(scraped: Scraped) -> None:
    s, end = scraped, scraped.window.end
    rate, span = f"{4 * SCRAPE_S:g}s", f"{end - s.window.start:.0f}s"
    peak = instant(s, f"max_over_time(sum(rate(kwasi_generation_tokens_total[{rate}]))[{span}:])")
    assert peak[""] > 0
    for name in ("kwasi_time_to_first_token_seconds", "kwasi_e2e_request_latency_seconds"):
        q = instant(s, f"histogram_quantile(0.99, sum by (le) (increase({name}_bucket[{span}])))")
        assert 0 < q[""] < LATENCY_BUCKETS[-1], name
    kv = s.prom.query_range("kwasi_kv_cache_usage_ratio", s.window.start, end, SCRAPE_S)
    ratios = [float(v) for series in kv for _, v in series["values"]]
    assert ratios and all(0 <= r <= 1 for r in ratios) and max(ratios) > 0
    held = s.prom.query_range("max_over_time(kwasi_kv_cache_usage_tokens[2s])", s.window.start, end, SCRAPE_S)
    assert max(float(v) for series in held for _, v in series["values"]) > 10  # the long prompt was held
    waiting = s.prom.query_range("max_over_time(kwasi_requests_waiting[2s])", s.window.start, end, SCRAPE_S)
    assert all(float(v) >= 0 for series in waiting for _, v in series["values"])


def test_running_and_waiting_exist_before_the_first_request(scraped: Scraped) -> None:
    for name in ("kwasi_requests_running", "kwasi_requests_waiting"):
        before = instant(scraped, f'{name}{{model="default", module="openai_chat"}}', at=scraped.before_load)
        assert list(before.values()) == [0.0], name


def test_slo_choices_are_bucket_boundaries_as_prometheus_stores_them(scraped: Scraped) -> None:
    for name, choices in (("kwasi_time_to_first_token_seconds", overview.TTFT_SLOS),
                          ("kwasi_time_per_output_token_seconds", overview.TPOT_SLOS)):
        stored = set(instant(scraped, f"count by (le) ({name}_bucket)"))
        assert set(choices) <= stored, (name, sorted(set(choices) - stored))


def test_overview_renders_to_png(scraped: Scraped, tmp_path: Path) -> None:
    out = Path(os.environ.get("KWASI_DOCS_PICTURE") or tmp_path / "overview.png")
    drawn = render(board(overview.UID), scraped.prom, scraped.window, out)
    stats_and_series = [p for p in board_panels(overview.UID) if p["type"] != "row"]
    assert drawn == [p["title"] for p in stats_and_series]
    assert out.stat().st_size > 50_000


def board_panels(uid: str) -> list[dict[str, str]]:
    panels: list[dict[str, str]] = json.loads(catalog.path(uid).read_text())["panels"]
    return panels
