"""CUDA-graph capture of the batch-1 decode step over a static KV cache.

Small models are bound by kernel-launch overhead, not bandwidth: eager PyTorch issues hundreds of launches
per token. Replaying one captured graph removes that. Shapes are fixed by attending over the whole cache
with a position mask (kv_len=None), so the same graph serves every step. CPU stays eager.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from kwasi_runtime.backends.llm.model import KVCache, Transformer

_pool: Any = None  # one memory pool shared by every captured graph


def graphs_supported(device: torch.device) -> bool:
    """CUDA only; KWASI_LLM_CUDA_GRAPHS=0 turns capture off (eager everywhere) for debugging."""
    return device.type == "cuda" and os.environ.get("KWASI_LLM_CUDA_GRAPHS", "1") != "0"


class DecodeGraph:
    """One captured decode step for slot 0 of `cache`; `run` writes the inputs and replays it."""

    def __init__(self, model: Transformer, cache: KVCache) -> None:
        global _pool
        device = model.device
        self.tokens = torch.zeros((1, 1), dtype=torch.long, device=device)
        # Warm up at the cache's last position: it is masked until reached and overwritten before being read,
        # so the warm-up cannot disturb positions already holding the prompt.
        self.positions = torch.full((1, 1), cache.length - 1, dtype=torch.long, device=device)
        self._host = torch.zeros(2, dtype=torch.long).pin_memory()
        side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):
                model(self.tokens, self.positions, cache, kv_len=None)
        torch.cuda.current_stream(device).wait_stream(side)
        if _pool is None:
            _pool = torch.cuda.graph_pool_handle()
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other guest threads may be running their own contexts on the GPU meanwhile.
        with torch.cuda.graph(self.graph, pool=_pool, capture_error_mode="thread_local"), torch.inference_mode():
            self.logits: torch.Tensor = model(self.tokens, self.positions, cache, kv_len=None)[0, -1]

    def run(self, token: int, position: int) -> torch.Tensor:
        self._host[0] = token
        self._host[1] = position
        # One small host-to-device copy per step instead of two fill kernels.
        self.tokens.view(-1).copy_(self._host[:1], non_blocking=True)
        self.positions.view(-1).copy_(self._host[1:], non_blocking=True)
        self.graph.replay()
        return self.logits
