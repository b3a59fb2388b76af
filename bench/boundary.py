"""Guest→host boundary cost: call rate and streamed tokens/s through compute_single + get_output_single
with a no-op backend, beside the same loop in plain Python (no wasm) measured in the same run.

    python bench/boundary.py [--tokens N] [--repeats R]

Target on the 2-core dev machine: >= 30,000 tokens/s through the boundary.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kwasi_runtime.nn.abi import Errno, NNError
from kwasi_runtime.nn.backend_api import ContextModel, ExecutionContext, Tensor
from kwasi_runtime.nn.host import NNHost
from kwasi_runtime.nn.models import NamedModels
from kwasi_runtime.sandbox import Sandbox, WasiSetup

ROOT = Path(__file__).resolve().parents[1]
GUEST = ROOT / "build" / "guests" / "bench_boundary.wasm"
TARGET_TOKENS_PER_S = 30_000
TOKEN = b"tok "


class NoopContext(ExecutionContext):
    """Streams `tokens` 4-byte tokens, then EndOfSequence; costs nothing else."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.left = tokens

    def set_input(self, index: int, tensor: Tensor) -> None:
        pass

    def compute(self) -> None:
        pass

    def get_output(self, index: int) -> bytes:
        return TOKEN

    def compute_single(self) -> None:
        if self.left == 0:
            self.left = self.tokens
            raise NNError(Errno.END_OF_SEQUENCE)
        self.left -= 1

    def get_output_single(self, index: int) -> bytes:
        return TOKEN

    def fini_single(self) -> None:
        pass


def best_of(repeats: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(repeats))


def run_guest(sandbox: Sandbox, args: Sequence[str]) -> float:
    out: list[bytes] = []
    start = time.perf_counter()
    result = sandbox.run(WasiSetup(args=["bench", *args], stdout=out.append))
    elapsed = time.perf_counter() - start
    if result.exit_code != 0:
        sys.exit(f"guest failed: {result}")
    return elapsed


def python_stream(tokens: int) -> float:
    """The same per-token work with no wasm: the backend calls and a bytes copy of each token."""
    ctx = NoopContext(tokens)
    buf = bytearray(256)
    start = time.perf_counter()
    while True:
        try:
            ctx.compute_single()
        except NNError:
            break
        data = ctx.get_output_single(0)
        buf[: len(data)] = data
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not GUEST.exists():
        sys.exit(f"{GUEST} is missing: run `make guests`")

    models = NamedModels()
    models.register("noop", ContextModel(lambda: NoopContext(args.tokens)))
    py_s = best_of(args.repeats, lambda: python_stream(args.tokens))
    py_tps = args.tokens / py_s
    print(f"tokens per run          {args.tokens}")
    print(f"python loop tokens/s    {py_tps:12,.0f}  ({1e6 / py_tps:.2f} us/token, no wasm)")
    wasm_tps = 0.0
    for label, fast in (("public define_func", False), ("raw unchecked (default)", True)):
        sandbox = Sandbox(GUEST, NNHost(models), cache_dir=None, fast_calls=fast)
        empty_s = best_of(args.repeats, functools.partial(run_guest, sandbox, ["calls", "0"]))
        calls_s = best_of(args.repeats, functools.partial(run_guest, sandbox, ["calls", str(args.tokens)]))
        stream_s = best_of(args.repeats, functools.partial(run_guest, sandbox, ["stream", str(args.tokens)]))
        call_rate = args.tokens / max(calls_s - empty_s, 1e-9)
        wasm_tps = args.tokens / max(stream_s - empty_s, 1e-9)
        print(f"[{label}]")
        print(f"  sandbox run overhead  {empty_s * 1e3:9.2f} ms")
        print(f"  guest->host calls/s   {call_rate:12,.0f}  ({1e6 / call_rate:.2f} us/call)")
        print(f"  guest tokens/s        {wasm_tps:12,.0f}  ({1e6 / wasm_tps:.2f} us/token, 2 calls/token)")
        print(f"  ratio guest/python    {wasm_tps / py_tps:12.3f}")
    verdict = "PASS" if wasm_tps >= TARGET_TOKENS_PER_S else "FAIL"
    print(f"target >= {TARGET_TOKENS_PER_S:,} tokens/s (default path): {verdict}")


if __name__ == "__main__":
    main()
