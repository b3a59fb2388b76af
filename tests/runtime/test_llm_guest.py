"""The streaming C guest against the real LLM backend, through `kwasi-runtime run` as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kwasi_testing.guests import built_guest
from kwasi_testing.models import smollm2_gguf

CHAT = json.dumps([{"role": "user", "content": "What is the capital of France?"}])
GREEDY_CHAT = json.dumps({"chat": True, "temp": 0, "ctx-size": 512, "n-gpu-layers": 0})


def run(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # One torch thread: the suite shares 2 cores, and this is a correctness test, not a benchmark.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "kwasi_runtime.cli", "run", "--no-cache", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def test_smollm2_answers_paris_through_the_streaming_guest() -> None:
    r = run("--nn-preload", f"default:GGML:AUTO:{smollm2_gguf()}", "--timeout", "240",
            built_guest("llm_stream"), "default", CHAT, GREEDY_CHAT)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    before = json.loads(r.stderr.split("[metadata before] ")[1].splitlines()[0])
    after = json.loads(r.stderr.split("[metadata after] ")[1].splitlines()[0])
    assert set(before) == {"input_tokens", "output_tokens", "llama_build_number", "llama_commit"}
    assert before["input_tokens"] > 5 and before["output_tokens"] == 0
    streamed = int(r.stderr.split("[stop] code 100 after ")[1].split()[0])
    assert after["output_tokens"] == streamed + 1  # the end-of-generation token counts, as in WasmEdge


def test_missing_ggml_model_is_103_at_load(tmp_path: Path) -> None:
    """GGML preloads are lazy, as in WasmEdge: start-up succeeds, the guest's load gets ModelNotFound."""
    r = run("--nn-preload", f"default:GGML:AUTO:{tmp_path / 'absent.gguf'}", built_guest("llm_stream"),
            "default", "hello")
    assert r.returncode == 3, r.stderr
    assert "Model not found" in r.stderr


def test_nn_config_gives_a_named_model_defaults() -> None:
    """The operator passes models[].config as --nn-config; the guest's own keys still win."""
    defaults = json.dumps({"chat": True, "temp": 0, "ctx-size": 512})
    r = run("--nn-preload", f"default:GGML:AUTO:{smollm2_gguf()}", "--nn-config", f"default={defaults}",
            "--timeout", "240", built_guest("llm_stream"), "default", CHAT, '{"n-gpu-layers": 0}')
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout  # only chat mode (from the defaults) makes the JSON prompt a conversation
    too_small = run("--nn-preload", f"default:GGML:AUTO:{smollm2_gguf()}", "--nn-config", f"default={defaults}",
                    built_guest("llm_stream"), "default", CHAT, '{"ctx-size": 16}')
    assert too_small.returncode == 4  # the guest's ctx-size overrode the default: PromptTooLong


def test_nn_config_errors_stop_at_startup() -> None:
    for flags, message in ((["--nn-config", "nope={}"], "--nn-config names no model: nope"),
                           (["--nn-config", "default=[1]"], "expected a JSON object"),
                           (["--nn-config", "default={x"], "not JSON")):
        r = run("--nn-preload", f"default:GGML:AUTO:{smollm2_gguf()}", *flags, built_guest("llm_stream"), "d", "x")
        assert r.returncode == 2 and message in r.stderr, r.stderr
