"""CUDA-graph capture of the decode step over a static KV cache, one graph per batch-size bucket.

Small models are bound by kernel-launch overhead, not bandwidth: eager PyTorch issues hundreds of launches
per token. Replaying one captured graph removes that. Shapes are fixed by attending over a fixed span of the
cache with a position mask, so one graph serves every step until the longest stream outgrows its span. A
batch of B streams replays the graph of the smallest batch bucket >= B (1, 2, 4, 8, 16, ..., capped at the
cache's slots) over rows 0 .. bucket-1 (the scheduler fills rows without a waiting stream with ghosts and
padding) and the smallest span bucket (256, 512, ..., the cache's length) holding every row's next position:
64 streams attending over all 4,096 positions would read the whole KV cache every step. CPU stays eager (or
compiled).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from kwasi_runtime.backends.llm.model import KVCache, Transformer

_pool: Any = None  # one memory pool shared by every captured graph
BUCKETS = (1, 2, 4, 8, 16, 32, 64)
MIN_SPAN = 256


def graphs_supported(device: torch.device) -> bool:
    """CUDA only; KWASI_LLM_CUDA_GRAPHS=0 turns capture off (eager everywhere) for debugging."""
    return device.type == "cuda" and os.environ.get("KWASI_LLM_CUDA_GRAPHS", "1") != "0"


def graph_batch(rows: int, n_slots: int) -> int:
    """The bucket whose graph covers cache rows 0 .. rows-1: the smallest >= rows, at most the cache's slots."""
    return min(next((b for b in BUCKETS if b >= rows), n_slots), n_slots)


def graph_span(kv_len: int, length: int) -> int:
    """The span bucket for attention over positions 0 .. kv_len-1: a power of two >= 256, at most `length`."""
    span = MIN_SPAN
    while span < kv_len:
        span *= 2
    return min(span, length)


class DecodeGraph:
    """One captured decode step for rows 0 .. batch-1 of `cache`, attending over its first `span` positions;
    `run` writes the inputs and replays it."""

    def __init__(self, model: Transformer, cache: KVCache, batch: int, span: int) -> None:
        global _pool
        device = model.device
        self.batch = batch
        self.tokens = torch.zeros((batch, 1), dtype=torch.long, device=device)
        # Warm up at the cache's last position: it is masked until reached and overwritten before being read,
        # so the warm-up cannot disturb positions already holding a prompt.
        self.positions = torch.full((batch, 1), cache.length - 1, dtype=torch.long, device=device)
        self._host = torch.zeros(2 * batch, dtype=torch.long).pin_memory()
        side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):
                model(self.tokens, self.positions, cache, kv_len=span, masked=True)
        torch.cuda.current_stream(device).wait_stream(side)
        if _pool is None:
            _pool = torch.cuda.graph_pool_handle()
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other guest threads may be running their own contexts on the GPU meanwhile.
        with torch.cuda.graph(self.graph, pool=_pool, capture_error_mode="thread_local"), torch.inference_mode():
            self.logits: torch.Tensor = model(self.tokens, self.positions, cache, kv_len=span, masked=True)[:, -1]

    def run(self, tokens: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """Logits `[batch, vocab]` (the graph's own buffer, overwritten by the next replay)."""
        n = self.batch
        self._host.copy_(torch.tensor([*tokens, *positions], dtype=torch.long))
        # One small host-to-device copy per input instead of a fill kernel per row.
        self.tokens.view(-1).copy_(self._host[:n], non_blocking=True)
        self.positions.view(-1).copy_(self._host[n:], non_blocking=True)
        self.graph.replay()
        return self.logits
