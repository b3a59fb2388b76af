"""Unmodified guests through `kwasi-runtime run --nn-rpc-uri` give exactly what they give locally: streaming,
non-streaming (with a short buffer) and interactive chat over stdin, SmolLM2 on both sides; and `serve` with
its models on the RPC server answers as it does with local models."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from kwasi_runtime.backends.llm import LlmBackend
from kwasi_runtime.nn.abi import ExecutionTarget
from kwasi_runtime.nnrpc.server.app import NNRpcServer
from kwasi_testing.guests import built_guest
from kwasi_testing.models import smollm2_gguf
from kwasi_testing.net import free_port
from kwasi_testing.nnrpc import cli, client_host, preload_host, quiet_env, rpc_server
from kwasi_testing.serving import ServerThread

CHAT = json.dumps([{"role": "user", "content": "Name three colours of the rainbow."}])
GREEDY_CHAT = json.dumps({"chat": True, "temp": 0, "ctx-size": 512, "n-gpu-layers": 0})
GREEDY = json.dumps({"temp": 0, "ctx-size": 512, "n-gpu-layers": 0, "n-predict": 20})
SAMPLED = json.dumps({"chat": True, "temp": 0.9, "seed": 7, "ctx-size": 512, "n-gpu-layers": 0})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NNRpcServer]:
    uri = f"unix://{tmp_path_factory.mktemp('rpc')}/nn.sock"
    with rpc_server(preload_host(f"default:GGML:AUTO:{smollm2_gguf()}"), uri, max_concurrency=4) as s:
        yield s


def run(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli("run", "--no-cache", "--timeout", "240", *args), capture_output=True, text=True,
                          timeout=300, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          env=quiet_env())


def both(server: NNRpcServer, guest: str, *args: str, stdin: str | None = None,
         rpc_flags: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    local = run("--nn-preload", f"default:GGML:AUTO:{smollm2_gguf()}", built_guest(guest), *args, stdin=stdin)
    remote = run("--nn-rpc-uri", server.config.uri, *rpc_flags, built_guest(guest), *args, stdin=stdin)
    return local, remote


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_streaming_guest_prints_what_it_prints_locally(server: NNRpcServer, mode: str) -> None:
    local, remote = both(server, "llm_stream", "default", CHAT, GREEDY_CHAT, rpc_flags=("--nn-rpc-stream", mode))
    assert local.returncode == 0, local.stderr
    assert (remote.returncode, remote.stdout, remote.stderr) == (0, local.stdout, local.stderr)
    assert "[stop] code 100" in remote.stderr  # end of sequence came back as errno 100 through the trailer


def test_sampling_with_a_seed_is_the_same_stream(server: NNRpcServer) -> None:
    local, remote = both(server, "llm_stream", "default", CHAT, SAMPLED)
    assert (remote.returncode, remote.stdout, remote.stderr) == (local.returncode, local.stdout, local.stderr)


def test_compute_guest_gets_too_large_with_the_needed_size(server: NNRpcServer) -> None:
    local, remote = both(server, "llm_compute", "default", "Once upon a time", GREEDY, "8")
    assert local.returncode == 0, local.stderr
    assert "[too_large]" in local.stderr and "buffer 8" in local.stderr
    assert (remote.returncode, remote.stdout, remote.stderr) == (0, local.stdout, local.stderr)


def test_interactive_chat_over_stdin(server: NNRpcServer) -> None:
    turns = "What is the capital of France?\nAnd the capital of Italy?\n"
    config = json.dumps({"temp": 0, "ctx-size": 1024, "n-gpu-layers": 0})
    local, remote = both(server, "llm_chat", "default", config, stdin=turns)
    assert local.returncode == 0, local.stderr
    assert local.stdout.count("ASSISTANT: ") == 2 and "[turns] 2" in local.stderr
    assert (remote.returncode, remote.stdout, remote.stderr) == (0, local.stdout, local.stderr)


def test_model_not_found_and_prompt_too_long_arrive_as_locally(server: NNRpcServer) -> None:
    missing = run("--nn-rpc-uri", server.config.uri, built_guest("llm_stream"), "nope", "hi")
    assert missing.returncode == 1 and "load_by_name_with_config failed: 8" in missing.stderr  # NOT_FOUND
    local, remote = both(server, "llm_stream", "default", "a b c d e f g h i j " * 4, json.dumps({"ctx-size": 16}))
    assert local.returncode == 4  # the guest's exit code for PROMPT_TOO_LONG (102)
    assert (remote.returncode, remote.stdout, remote.stderr) == (4, local.stdout, local.stderr)


QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Write a poem about rain."}]


def test_serve_with_remote_models_answers_as_with_local_ones(server: NNRpcServer) -> None:
    """max_tokens stops the guest mid-stream: the usage it then reads must count what it consumed, not what the
    server generated ahead of it."""
    answers = []
    for model in (LlmBackend().preload([smollm2_gguf()], ExecutionTarget.CPU),
                  client_host(server.config.uri).models.get("default")):
        s = ServerThread(model, wagi=False, timeout_s=120.0)
        try:
            with openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0, timeout=120) as client:
                chunks = list(client.chat.completions.create(
                    model="default", messages=QUESTION, stream=True, temperature=0, max_tokens=12,
                    stream_options={"include_usage": True}))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            usage = chunks[-1].usage
            assert usage is not None
            answers.append((text, usage.prompt_tokens, usage.completion_tokens))
            s.wait_idle()
            assert s.sample("kwasi_generation_tokens_total", model="default", module="openai_chat") == 12
        finally:
            s.stop()
    assert answers[0] == answers[1] and answers[0][2] == 12


def test_serve_cli_takes_its_models_from_the_rpc_server(server: NNRpcServer) -> None:
    port = free_port()
    proc = subprocess.Popen(cli("serve", "--nn-rpc-uri", server.config.uri, "--host", "127.0.0.1", "--port", str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=quiet_env())
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while request_status(f"{url}/readyz") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.3)
        with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120) as client:
            assert [m.id for m in client.models.list()] == ["default"]
            reply = client.chat.completions.create(model="default", messages=QUESTION, temperature=0, max_tokens=8)
        assert reply.usage is not None and reply.usage.completion_tokens == 8
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def request_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return int(reply.status)
    except (urllib.error.URLError, ConnectionError):
        return 0
