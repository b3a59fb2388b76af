"""Token sampling with llama.cpp's semantics and order.

Chain: penalties -> top-k -> top-p -> min-p -> temperature -> draw. Temperature comes last as in llama.cpp's
default chain (HF applies it first; the two differ when temp != 1), so WasmEdge guests see familiar behaviour.
temp <= 0 means greedy. Non-greedy sampling runs on CPU in fp32 with a per-stream `torch.Generator`, so a
given seed reproduces the same tokens on any device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: pick a fresh random seed


class TokenConstraint(Protocol):
    """What the sampler needs of a grammar (constraint.Constraint): a mask before, the choice after."""

    def mask(self, scores: torch.Tensor) -> None: ...

    def accept(self, token: int) -> None: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class TokenLogprobs:
    """The sampled token's log-probability and the `n-probs` most likely tokens, from the scores it was drawn from
    (after logit bias, penalties and the grammar mask; before top-k/top-p/min-p truncation and temperature)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass
class SamplingParams:
    # Defaults are llama.cpp's `common_params_sampling`, which WasmEdge's GGML plugin inherits.
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    last_n_penalty: int = 64  # -1: the whole context; 0: penalties off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = RANDOM_SEED
    logit_bias: dict[int, float] = field(default_factory=dict)  # added to the logits first (OpenAI's logit_bias)
    n_probs: int = 0  # WasmEdge's n-probs: how many top alternatives to report with each token
    logprobs: bool = False  # report the sampled token's log-probability (with n_probs alternatives)

    @property
    def greedy(self) -> bool:
        return self.temp <= 0.0

    @property
    def penalised(self) -> bool:
        return self.last_n_penalty != 0 and (
            self.repeat_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
        )


class Sampler:
    """Per-stream sampler; `reset` re-seeds it so the same prompt and seed give the same tokens."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator = torch.Generator()
        self.constraint: TokenConstraint | None = None
        self.last_logprobs: TokenLogprobs | None = None
        self.reset()

    def reset(self) -> None:
        seed = self.params.seed
        if seed < 0 or seed == RANDOM_SEED:
            self.generator.seed()
        else:
            # torch takes 64 bits; a larger seed (a guest's metadata) wraps instead of overflowing.
            self.generator.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
        if self.constraint is not None:
            self.constraint.reset()
        self.last_logprobs = None

    def sample(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        """One token from `[vocab]` logits; `history` = prompt + generated ids (for penalties)."""
        p = self.params
        if p.greedy and not p.penalised and not (p.logit_bias or p.logprobs or self.constraint):
            return int(logits.argmax())  # stays on the device: one scalar sync
        scores = logits.detach().to("cpu", torch.float32).clone()
        if p.logit_bias:
            apply_logit_bias(scores, p.logit_bias)
        if p.penalised:
            apply_penalties(scores, history, p)
        if self.constraint is not None:
            self.constraint.mask(scores)
        token = int(scores.argmax()) if p.greedy else self._draw(scores)
        if p.logprobs:
            self.last_logprobs = logprobs_of(scores, token, p.n_probs)
        if self.constraint is not None:
            self.constraint.accept(token)
        return token

    def _draw(self, scores: torch.Tensor) -> int:
        p = self.params
        k = p.top_k if 0 < p.top_k < scores.numel() else scores.numel()
        # top-k also sorts (descending), which top-p needs; doing it first keeps the CPU sort small.
        values, indices = torch.topk(scores, k)
        if p.top_p < 1.0:
            probs = torch.softmax(values, dim=-1)
            # Keep the smallest prefix whose mass reaches top_p: token i stays if the mass before it < top_p.
            before = torch.cumsum(probs, dim=-1) - probs
            keep = before < p.top_p
            keep[0] = True
            values, indices = values[keep], indices[keep]
        if p.min_p > 0.0:
            probs = torch.softmax(values, dim=-1)
            keep = probs >= p.min_p * probs[0]
            values, indices = values[keep], indices[keep]
        # Relative to the best score (values are sorted): a temperature near 0 then sharpens instead of
        # overflowing to inf - inf; one below fp32's range divides by 0, where the best scores' 0 / 0 is 0.
        probs = torch.softmax(torch.nan_to_num((values - values[0]) / p.temp, nan=0.0), dim=-1)
        choice = torch.multinomial(probs, 1, generator=self.generator)
        return int(indices[choice])


def apply_penalties(scores: torch.Tensor, history: Sequence[int], p: SamplingParams) -> None:
    """CTRL repetition penalty plus OpenAI presence/frequency penalties over the last-n window, in place."""
    window = history if p.last_n_penalty < 0 else history[-p.last_n_penalty:]
    counts = Counter(t for t in window if 0 <= t < scores.numel())
    if not counts:
        return
    ids = torch.tensor(list(counts), dtype=torch.long)
    freq = torch.tensor([counts[t] for t in counts], dtype=torch.float32)
    selected = scores[ids]
    if p.repeat_penalty != 1.0:
        selected = torch.where(selected > 0, selected / p.repeat_penalty, selected * p.repeat_penalty)
    selected = selected - freq * p.frequency_penalty - p.presence_penalty
    # A penalty near 0 (any positive one is accepted) divides a positive logit past fp32's range: keep it finite.
    big = torch.finfo(scores.dtype).max
    scores[ids] = selected.clamp(-big, big)


def apply_logit_bias(scores: torch.Tensor, bias: dict[int, float]) -> None:
    ids = [t for t in bias if 0 <= t < scores.numel()]
    if ids:
        scores[torch.tensor(ids)] += torch.tensor([bias[t] for t in ids], dtype=scores.dtype)


def logprobs_of(scores: torch.Tensor, token: int, n: int) -> TokenLogprobs:
    logprobs = torch.log_softmax(scores, dim=-1)
    top: tuple[tuple[int, float], ...] = ()
    if n > 0:
        values, ids = torch.topk(logprobs, min(n, logprobs.numel()))
        top = tuple((int(i), float(v)) for i, v in zip(ids, values, strict=True) if torch.isfinite(v))
    return TokenLogprobs(token, float(logprobs[token]), top)
