"""Constrained decoding's per-token cost: SmolLM2-135M-Instruct decoding greedily with a JSON schema, a GBNF
grammar and a forced tool call (llguidance masks, runtime/kwasi_runtime/backends/llm/constraint.py), beside
unconstrained decoding of the same prompt, interleaved in one run. Target: <= 10% on time per output token.

    python bench/constrained.py [--tokens 48] [--repeats 5] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch

from kwasi_runtime.backends.llm import extensions
from kwasi_runtime.backends.llm.constraint import Constraint, grammar_from_gbnf, grammar_from_json_schema
from kwasi_runtime.backends.llm.generation import LlmGenerator, Stream
from kwasi_runtime.backends.llm.options import Options
from kwasi_runtime.backends.llm.sampling import SamplingParams
from kwasi_runtime.backends.llm.tool_calls import setup
from kwasi_runtime.sample_models import smollm2_gguf

QUESTION = [{"role": "user", "content": "Write a long story about a cat as JSON with a title and paragraphs."}]
SCHEMA = {"type": "object", "properties": {"title": {"type": "string"},
                                           "paragraphs": {"type": "array", "items": {"type": "string"}}},
          "required": ["title", "paragraphs"]}
GBNF = 'root ::= "Story: " [a-zA-Z ,.]+ "\\n"'
TOOL = {"type": "function", "function": {"name": "write_story", "parameters": SCHEMA}}
TARGET = 0.10


class Timed:
    """A constraint that keeps the time spent in it (the mask before sampling and following the token)."""

    def __init__(self, inner: Constraint) -> None:
        self.inner = inner
        self.seconds = 0.0

    def mask(self, scores: torch.Tensor) -> None:
        started = time.perf_counter()
        self.inner.mask(scores)
        self.seconds += time.perf_counter() - started

    def accept(self, token: int) -> None:
        started = time.perf_counter()
        self.inner.accept(token)
        self.seconds += time.perf_counter() - started

    def reset(self) -> None:
        self.inner.reset()


def timed(gen: LlmGenerator, prompt: list[int], tokens: int,
          constraint: Callable[[], Constraint | None]) -> tuple[float, float]:
    """(seconds per decode step after the first token, of which inside the constraint)."""
    stream = Stream(gen.loaded, gen.loaded.context_length(0), SamplingParams(temp=0.0))
    made = constraint()
    timer = Timed(made) if made is not None else None
    stream.sampler.constraint = timer
    stream.set_prompt(prompt)
    stream.step()
    if timer is not None:
        timer.seconds = 0.0
    started = time.perf_counter()
    for _ in range(tokens):
        stream.step()
    elapsed = time.perf_counter() - started
    stream.release()
    return elapsed / tokens, (timer.seconds / tokens if timer is not None else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = LlmGenerator.from_path(smollm2_gguf(), args.device)
    tok = gen.tokenizer
    prompt = gen.encode_prompt(QUESTION)
    tools = setup(tok.chat_template, [TOOL])
    options = Options(tools=[TOOL], tool_choice="required")
    rows: dict[str, Callable[[], Constraint | None]] = {
        "unconstrained": lambda: None,
        "json-schema": lambda: Constraint(tok, grammar_from_json_schema(json.dumps(SCHEMA))),
        "grammar (GBNF)": lambda: Constraint(tok, grammar_from_gbnf(GBNF)),
        "forced tool call": lambda: extensions.constraint_for(tok, options, tools),
    }
    for make in rows.values():  # warm-up: llguidance's vocabulary, torch's kernels
        timed(gen, prompt, 4, make)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    names = list(rows)
    for r in range(args.repeats):  # interleaved and rotated, so load changes and order hit every row alike
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(timed(gen, prompt, args.tokens, rows[name]))
    base = statistics.median(t for t, _ in samples["unconstrained"])
    print(f"SmolLM2-135M-Instruct Q4_1, {args.device}, greedy, {args.tokens} decode tokens x {args.repeats} "
          f"(median), torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    print(f"{'row':<18} {'ms/token':>9} {'vs unconstrained':>17} {'in the mask':>12} {'mask share':>11}")
    worst = 0.0
    for name, values in samples.items():
        per = statistics.median(t for t, _ in values)
        inside = statistics.median(m for _, m in values)
        share = inside / base  # the grammar's own time against an unconstrained token of the same run
        if name != "unconstrained":
            worst = max(worst, share)
        print(f"{name:<18} {per * 1e3:>9.2f} {per / base - 1:>+16.1%} {inside * 1e3:>10.3f}ms {share:>10.1%}")
    verdict = "meets" if worst <= TARGET else "misses"
    print(f"worst grammar cost per token: {worst:.1%} of an unconstrained token ({verdict} the <= {TARGET:.0%} "
          f"target); the whole-token column includes the load's noise")


if __name__ == "__main__":
    main()
