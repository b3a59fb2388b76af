"""NNRPC benchmark: guests through `kwasi-runtime nn-rpc-server` beside the same guests on local models, in the
same run, SmolLM2 on the CPU.

    python bench/nnrpc.py                                  # every section
    python bench/nnrpc.py --sections overhead,decode --repeat 3
    python bench/nnrpc.py --sections scale --guests 16

Sections:
  overhead  per-token cost of the RPC path in µs: the boundary guest (compute_single + get_output_single per
            token) against a no-op token source, in this process, local vs unix socket vs TCP loopback + TLS,
            one call per token (WasmEdge's way) and Generate streaming.
  decode    SmolLM2 decode tokens/s of the streaming guest, in this process, on a local model vs the same model
            on the server. Targets: one call per token >= 0.9x local, streaming >= 0.97x.
  scale     N guest processes through one server at once vs one guest: aggregate tokens/s >= 3x at 16.
  abuse     garbage bytes, an oversized message, unknown handles, a non-UTF-8 name, a client killed and the
            server killed mid-stream: the server keeps serving and no KV slot or session is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT / "tests"), str(ROOT / "bench")]

import grpc  # noqa: E402
from boundary import NoopContext  # noqa: E402

from kwasi_runtime.backends.registry import Backends  # noqa: E402
from kwasi_runtime.nn.backend_api import ContextModel  # noqa: E402
from kwasi_runtime.nn.host import NNHost  # noqa: E402
from kwasi_runtime.nn.models import NamedModels  # noqa: E402
from kwasi_runtime.nnrpc import wire  # noqa: E402
from kwasi_runtime.nnrpc.client import remote_host  # noqa: E402
from kwasi_runtime.nnrpc.client.options import ClientOptions  # noqa: E402
from kwasi_runtime.nnrpc.proto import wasi_ephemeral_nn_pb2 as nn  # noqa: E402
from kwasi_runtime.nnrpc.server.app import NNRpcServer, ServerConfig  # noqa: E402
from kwasi_runtime.nnrpc.server.security import Security, unix_path  # noqa: E402
from kwasi_runtime.sample_models import smollm2_gguf  # noqa: E402
from kwasi_runtime.sandbox import Sandbox, WasiSetup  # noqa: E402
from kwasi_testing.net import free_port  # noqa: E402
from kwasi_testing.nnrpc import cli, make_tls, raw_unary, server_process, wait_serving  # noqa: E402

GUESTS = ROOT / "build" / "guests"
PROMPT = json.dumps([{"role": "user", "content": "Write a long story about a robot who learns to paint."}])
UNARY_TARGET, STREAM_TARGET, SCALE_TARGET = 0.90, 0.97, 3.0
BEST_OF = 5  # overhead runs per path
SERVER_NAME = "localhost"  # the TLS certificate's name; clients connect to 127.0.0.1


def env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "tests")}


METRICS_PORT = free_port()


class Endpoints:
    """One server reachable two ways is two servers here: a unix socket and TCP loopback with TLS."""

    def __init__(self, workdir: Path) -> None:
        self.pki = make_tls(workdir, (SERVER_NAME,))
        self.unix = f"unix://{workdir}/nn.sock"
        self.tls = f"127.0.0.1:{free_port()}"

    def server_flags(self, uri: str) -> list[str]:
        if uri == self.unix:
            return []
        return ["--tls-cert", str(self.pki["server.crt"]), "--tls-key", str(self.pki["server.key"])]

    def client_flags(self, uri: str) -> list[str]:
        if uri == self.unix:
            return ["--nn-rpc-uri", uri]
        return ["--nn-rpc-uri", uri, "--nn-rpc-tls-ca", str(self.pki["ca.crt"]),
                "--nn-rpc-tls-server-name", SERVER_NAME]

    def client_options(self, uri: str, stream: bool) -> ClientOptions:
        if uri == self.unix:
            return ClientOptions(uri, stream=stream)
        return ClientOptions(uri, stream=stream, tls_ca=self.pki["ca.crt"], tls_server_name=SERVER_NAME)

    def wait(self, uri: str, timeout: float = 300) -> None:
        if uri == self.unix:
            wait_serving(uri, timeout)
        else:
            wait_serving(uri, timeout, grpc.ssl_channel_credentials(self.pki["ca.crt"].read_bytes()),
                         **{"grpc.ssl_target_name_override": SERVER_NAME})


# --- overhead: a no-op token source, in-process guests --------------------------------------------------------
def noop_models(tokens: int) -> NamedModels:
    models = NamedModels()
    models.register("noop", ContextModel(lambda: NoopContext(tokens)))
    return models


def serve_noop(args: argparse.Namespace) -> None:
    """Child process: the no-op model behind NNRPC until SIGTERM."""
    security = Security(tls_cert=Path(args.tls_cert), tls_key=Path(args.tls_key)) if args.tls_cert else Security()
    server = NNRpcServer(ServerConfig(args.uri, security=security, grace_s=0), NNHost(noop_models(args.tokens)))
    server.serve_until_signal()


def guest_seconds(sandbox: Sandbox, tokens: int) -> float:
    out: list[bytes] = []
    started = time.perf_counter()
    result = sandbox.run(WasiSetup(args=["bench", "stream", "0"], stdout=out.append))  # the model ends the stream
    elapsed = time.perf_counter() - started
    if result.exit_code != 0 or int(b"".join(out)) != tokens:
        raise SystemExit(f"boundary guest failed: {result}")
    return elapsed


def overhead(args: argparse.Namespace, ep: Endpoints) -> None:
    tokens = args.overhead_tokens
    guest = GUESTS / "bench_boundary.wasm"
    hosts: list[tuple[str, NNHost]] = [("local", NNHost(noop_models(tokens)))]
    children = []
    for label, uri in (("unix", ep.unix), ("tcp+tls", ep.tls)):
        children.append(subprocess.Popen([sys.executable, __file__, "--serve-noop", uri, "--tokens", str(tokens),
                                          *ep.server_flags(uri)], env=env(1)))
        ep.wait(uri)
        for stream in (False, True):
            hosts.append((f"{label} {'stream' if stream else 'unary'}", remote_host(ep.client_options(uri, stream))))
    try:
        print(f"\n[overhead] {tokens} tokens per run through guests/bench_boundary.c, best of {BEST_OF}")
        print(f"{'path':18} {'us/token':>10} {'tokens/s':>12} {'+us/token':>10}")
        base = 0.0
        for label, host in hosts:
            sandbox = Sandbox(guest, host, cache_dir=None)
            guest_seconds(sandbox, tokens)  # warm: connection, session, compiled code
            best = min(guest_seconds(sandbox, tokens) for _ in range(BEST_OF))
            per = best / tokens * 1e6
            base = base or per
            print(f"{label:18} {per:10.1f} {tokens / best:12,.0f} {per - base:10.1f}")
    finally:
        for _, host in hosts:
            host.models.close()  # before the servers go, so no client reports them lost
        for child in children:
            child.terminate()
            child.wait(30)


# --- decode: SmolLM2 through the streaming guest ------------------------------------------------------------
def guest_run(flags: Sequence[str], ctx_size: int, threads: int = 1) -> tuple[int, float, float, float]:
    """(tokens, first-byte time, last-byte time, start) of one llm_stream run; decode = tokens after the first."""
    config = json.dumps({"chat": True, "temp": 0, "ignore-eos": True, "ctx-size": ctx_size, "n-gpu-layers": 0})
    start = time.monotonic()
    proc = subprocess.Popen(cli("run", "--no-cache", *flags, GUESTS / "llm_stream.wasm", "default", PROMPT, config),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(threads))
    assert proc.stdout is not None
    first = last = 0.0
    while os.read(proc.stdout.fileno(), 65536):
        last = time.monotonic()
        first = first or last
    err = proc.communicate()[1].decode()
    if "[stop] code 101 after " not in err:
        raise SystemExit(f"guest failed ({proc.returncode}): {err[-2000:]}")
    return int(err.split("[stop] code 101 after ")[1].split()[0]), first, last, start


def rate(run: tuple[int, float, float, float]) -> float:
    tokens, first, last, _ = run
    return (tokens - 1) / (last - first)


def guest_in_process(sandbox: Sandbox, ctx_size: int) -> float:
    """Decode tokens/s of one llm_stream run in this process: token times are the guest's stdout writes."""
    config = json.dumps({"chat": True, "temp": 0, "ignore-eos": True, "ctx-size": ctx_size, "n-gpu-layers": 0})
    times: list[float] = []
    err: list[bytes] = []
    result = sandbox.run(WasiSetup(args=["llm_stream", "default", PROMPT, config],
                                   stdout=lambda chunk: times.append(time.monotonic()), stderr=err.append))
    text = b"".join(err).decode()
    if result.exit_code != 5 or "[stop] code 101 after " not in text:  # 5: the guest's exit at a full context
        raise SystemExit(f"guest failed ({result}): {text[-2000:]}")
    tokens = int(text.split("[stop] code 101 after ")[1].split()[0])
    return (tokens - 1) / (times[tokens - 1] - times[0])


def decode(args: argparse.Namespace, ep: Endpoints, model: Path) -> None:
    """The same guest in this process, its host local (the model loaded here once) or remote; rounds in a new
    order each time, so load from elsewhere on the machine hits every path alike."""
    import torch

    from kwasi_runtime.host_flags import load_models, parse_nn_preload

    torch.set_num_threads(1)
    backends = Backends()
    hosts = {"local": NNHost(load_models([parse_nn_preload(f"default:GGML:AUTO:{model}")], backends), backends)}
    for label, uri in (("unix", ep.unix), ("tcp+tls", ep.tls)):
        hosts[f"{label} unary"] = remote_host(ep.client_options(uri, stream=False))
        hosts[f"{label} stream"] = remote_host(ep.client_options(uri, stream=True))
    guest = GUESTS / "llm_stream.wasm"
    sandboxes = {label: Sandbox(guest, host, cache_dir=None) for label, host in hosts.items()}
    rates: dict[str, list[float]] = {p: [] for p in sandboxes}
    with servers(ep, model, args.guests):
        for sandbox in sandboxes.values():
            guest_in_process(sandbox, 64)  # warm-up: weights, connections, compiled code
        order = list(sandboxes.items())
        for _ in range(args.repeat):
            random.shuffle(order)
            for label, sandbox in order:
                rates[label].append(guest_in_process(sandbox, args.ctx_size))
        for label, host in hosts.items():
            if label != "local":
                host.models.close()
    local = statistics.median(rates["local"])
    print(f"\n[decode] SmolLM2 via llm_stream, greedy, ctx-size {args.ctx_size}, {args.repeat} shuffled rounds; "
          "ratio = median over rounds of (path / local in the same round), range in brackets")
    print(f"{'path':18} {'tokens/s':>10} {'ms/token':>9} {'ratio':>7} {'[min - max]':>15}  target")
    for label, values in rates.items():
        r = statistics.median(values)
        paired = sorted(v / base for v, base in zip(values, rates["local"], strict=True))
        ratio = statistics.median(paired)
        target = "" if label == "local" else (STREAM_TARGET if label.endswith("stream") else UNARY_TARGET)
        verdict = "" if not target else f">= {target}: {'PASS' if ratio >= float(target) else 'FAIL'}"
        print(f"{label:18} {r:10.2f} {1e3 / r:9.2f} {ratio:7.3f} [{paired[0]:5.3f} - {paired[-1]:5.3f}]  {verdict}")
    print(f"(local median {local:.2f} tokens/s)")


@contextmanager
def servers(ep: Endpoints, model: Path, slots: int) -> Iterator[None]:
    preload = ("--nn-preload", f"default:GGML:AUTO:{model}", "--max-concurrency", str(slots))
    with server_process(ep.unix, *preload, "--metrics-address", f"127.0.0.1:{METRICS_PORT}", ready=False) as unix, \
            server_process(ep.tls, *preload, *ep.server_flags(ep.tls), ready=False) as tls:
        ep.wait(ep.unix)
        ep.wait(ep.tls)
        yield
        for proc in (unix, tls):
            assert proc.poll() is None, "a server died"


# --- scale: N guest processes through one server --------------------------------------------------------------
def scale(args: argparse.Namespace, ep: Endpoints, model: Path) -> None:
    flags = ep.client_flags(ep.unix)
    with servers(ep, model, args.guests):
        guest_run(flags, 64)
        one = statistics.median(rate(guest_run(flags, args.ctx_size)) for _ in range(3))
        runs: list[tuple[int, float, float, float]] = []
        procs = [subprocess.Popen([sys.executable, __file__, "--one-guest", *flags, "--ctx-size", str(args.ctx_size)],
                                  stdout=subprocess.PIPE, text=True, env=env(1)) for _ in range(args.guests)]
        for proc in procs:
            out = proc.communicate(timeout=1800)[0]
            tokens, first, last, start = json.loads(out)
            runs.append((tokens, first, last, start))
    starts = max(r[1] for r in runs)  # every guest is decoding from here ...
    ends = min(r[2] for r in runs)  # ... until the first one is done
    in_window = sum(r[0] * max(0.0, min(ends, r[2]) - max(starts, r[1])) / (r[2] - r[1]) for r in runs)
    aggregate = in_window / (ends - starts) if ends > starts else float("nan")
    total = sum(r[0] for r in runs) / (max(r[2] for r in runs) - min(r[1] for r in runs))
    print(f"\n[scale] {args.guests} guest processes through one server (unix socket, streaming)")
    print(f"one guest              {one:8.2f} tokens/s")
    print(f"{args.guests} guests, all decoding {aggregate:8.2f} tokens/s aggregate = {aggregate / one:.2f}x one guest "
          f"(>= {SCALE_TARGET}x: {'PASS' if aggregate / one >= SCALE_TARGET else 'FAIL'})")
    print(f"{args.guests} guests, first to last {total:8.2f} tokens/s aggregate = {total / one:.2f}x "
          "(prefills included)")


# --- abuse ------------------------------------------------------------------------------------------------------
def scrape(name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    line = next((ln for ln in text.splitlines() if ln.startswith(f"{name}{{{want}}}" if want else f"{name} ")), "")
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


def settled(sessions: float = 0, timeout: float = 60.0) -> bool:
    """No KV slot in use and no more than `sessions` sessions (the raw calls' anonymous one), within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scrape("kwasi_kv_cache_usage_ratio", model="default") == 0 and scrape("kwasi_nnrpc_sessions") <= sessions:
            return True
        time.sleep(0.2)
    return False


def errno_of(uri: str, path: str, payload: bytes) -> str:
    with grpc.insecure_channel(uri) as channel:
        try:
            raw_unary(channel, path)(payload, timeout=30)
            return "ok"
        except grpc.RpcError as e:
            errno = wire.errno_from_trailers(e.trailing_metadata())
            return f"errno {int(errno)}" if errno is not None else e.code().name


def streaming_guest(flags: Sequence[str]) -> subprocess.Popen[bytes]:
    config = json.dumps({"chat": True, "temp": 0, "ignore-eos": True, "ctx-size": 2048, "n-gpu-layers": 0})
    proc = subprocess.Popen(cli("run", *flags, GUESTS / "llm_stream.wasm", "default", PROMPT, config),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(1))
    assert proc.stdout is not None
    proc.stdout.read(40)  # tokens are flowing
    return proc


def abuse(args: argparse.Namespace, ep: Endpoints, model: Path) -> None:
    uri, results = ep.unix, []

    def check(what: str, ok: bool, detail: str = "") -> None:
        results.append(ok)
        print(f"  {'PASS' if ok else 'FAIL'}  {what}{f' ({detail})' if detail else ''}")

    print("\n[abuse] against one server; each check also needs the server to answer health afterwards")
    preload = ("--nn-preload", f"default:GGML:AUTO:{model}", "--max-message-mib", "4")
    with server_process(uri, *preload, "--metrics-address", f"127.0.0.1:{METRICS_PORT}") as server:
        for garbage in (os.urandom(4096), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(4096)):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(unix_path(uri)))
                s.sendall(garbage)
        wait_serving(uri, timeout=5)
        check("garbage bytes on the socket", server.poll() is None)
        big = nn.SetInputRequest(resource_handle=0, tensor=nn.Tensor(data=b"x" * (8 << 20))).SerializeToString()
        got = errno_of(uri, wire.SET_INPUT.path, big)
        check("8 MiB message to a 4 MiB server", got == "RESOURCE_EXHAUSTED", got)
        got = errno_of(uri, wire.COMPUTE_SINGLE.path, nn.ComputeRequest(resource_handle=12345).SerializeToString())
        check("unknown context handle", got == "errno 1", got)
        got = errno_of(uri, wire.LOAD_BY_NAME.path, b"\x0a\x03\xff\xfe\xfd")
        check("non-UTF-8 model name", got == "errno 1", got)
        before = scrape("kwasi_nnrpc_sessions")  # the raw calls above share one anonymous session
        guest = streaming_guest(ep.client_flags(uri))
        busy = scrape("kwasi_kv_cache_usage_ratio", model="default") > 0 and scrape("kwasi_nnrpc_sessions") > before
        guest.send_signal(signal.SIGKILL)
        guest.wait(30)
        check("client killed mid-stream: its KV slot and session come back", busy and settled(before))
        wait_serving(uri, timeout=5)
        guest = streaming_guest(ep.client_flags(uri))
        server.send_signal(signal.SIGKILL)
        _, err = guest.communicate(timeout=120)
        check("server killed mid-stream: the guest gets errno 5 and exits (no trap)",
              guest.returncode == 1 and b"compute_single failed: 5" in err, f"exit {guest.returncode}")
    with server_process(uri, *preload, "--metrics-address", f"127.0.0.1:{METRICS_PORT}") as server:
        run = subprocess.run(cli("run", *ep.client_flags(uri), GUESTS / "llm_stream.wasm", "default", PROMPT,
                                 json.dumps({"chat": True, "temp": 0, "ctx-size": 128, "n-gpu-layers": 0})),
                             capture_output=True, env=env(1), timeout=600)
        check("restarted server serves the next guest", run.returncode in (0, 5) and server.poll() is None,
              f"exit {run.returncode}")
        check("nothing left behind", settled())
    print(f"abuse: {sum(results)}/{len(results)} checks pass")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="overhead,decode,scale,abuse")
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--ctx-size", type=int, default=160, help="prompt + generated tokens per decode run")
    p.add_argument("--guests", type=int, default=16)
    p.add_argument("--overhead-tokens", type=int, default=5000)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--serve-noop", default=None, help=argparse.SUPPRESS)
    p.add_argument("--one-guest", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--tls-cert", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tls-key", default=None, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.serve_noop:
        args.uri = args.serve_noop
        serve_noop(args)
        return
    if args.one_guest:
        print(json.dumps(guest_run(rest, args.ctx_size)))
        return
    model = args.model or smollm2_gguf()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} on {os.cpu_count()} cores; "
          f"torch threads 1 in every process")
    with tempfile.TemporaryDirectory(prefix="kwasi-nnrpc-bench-") as tmp:
        ep = Endpoints(Path(tmp))
        sections = args.sections.split(",")
        if "overhead" in sections:
            overhead(args, ep)
        if "decode" in sections:
            decode(args, ep, model)
        if "scale" in sections:
            scale(args, ep, model)
        if "abuse" in sections:
            abuse(args, ep, model)


if __name__ == "__main__":
    main()
