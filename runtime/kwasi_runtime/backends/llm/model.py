"""A Llama-family decoder in plain PyTorch with a static, slot-based KV cache.

Layout follows gpt-fast: fused q/k/v and gate/up projections (fewer kernel launches per token, which is what
bounds small models), RMSNorm in fp32, SDPA attention. The cache is allocated once per stream set with a
leading *slot* dimension, so several streams share one batched forward (see `scheduler.py`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from kwasi_runtime.backends.llm.config import ModelConfig
from kwasi_runtime.backends.llm.rope import apply_rotary, cos_sin_table, inverse_frequencies


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32, cast back, *then* scale: the order HF uses, which matters for bf16 parity.
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)  # one fused kernel
        result: torch.Tensor = self.weight * normed.to(x.dtype)
        return result


class KVCache:
    """Keys/values of every layer for `n_slots` streams of `length` positions: `[slots, kv_heads, length, head_dim]`.

    Owned by a stream (or a batch of streams), never by the model, so contexts share weights but not state.
    Also holds the RoPE cos/sin tables for its length.
    """

    def __init__(self, model: Transformer, n_slots: int, length: int, zeroed: bool = True) -> None:
        cfg = model.config
        shape = (n_slots, cfg.n_kv_heads, length, cfg.head_dim)
        dtype, device = model.dtype, model.device
        # zeroed=False leaves memory uncommitted until used (many slots x long contexts on CPU); the owner must
        # then zero any position a masked read can reach (the slot scheduler does).
        alloc = torch.zeros if zeroed else torch.empty
        self.keys = [alloc(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.values = [alloc(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        cos, sin = cos_sin_table(model.inv_freq.cpu(), length)
        self.cos = cos.to(device=device, dtype=dtype)
        self.sin = sin.to(device=device, dtype=dtype)
        self.length = length
        self.n_slots = n_slots

    def update(self, layer: int, slot: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               kv_len: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes k/v `[B, H, T, D]` at `positions [B, T]` of slots `slot .. slot+B-1`; returns the readable span."""
        batch = k.shape[0]
        k_rows = self.keys[layer].narrow(0, slot, batch)
        v_rows = self.values[layer].narrow(0, slot, batch)
        if batch == 1:
            # Batch 1 (solo decode, every prefill chunk): a plain index_copy along positions, cheapest on CPU.
            k_rows.index_copy_(2, positions[0], k)
            v_rows.index_copy_(2, positions[0], v)
        else:
            rows = torch.arange(batch, device=k.device).unsqueeze(1)
            # Advanced indices on dims 0 and 2 put [B, T] first: the value is [B, T, H, D].
            k_rows[rows, :, positions] = k.transpose(1, 2)
            v_rows[rows, :, positions] = v.transpose(1, 2)
        if kv_len is None:
            return k_rows, v_rows
        # Eager decode reads only the filled prefix; a captured graph passes None and relies on the mask.
        return k_rows[:, :, :kv_len], v_rows[:, :, :kv_len]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        q_size = config.n_heads * config.head_dim
        kv_size = config.n_kv_heads * config.head_dim
        self.wqkv = nn.Linear(config.dim, q_size + 2 * kv_size, bias=config.qkv_bias)
        self.wo = nn.Linear(q_size, config.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None, cache: KVCache, layer: int, slot: int,
                kv_len: int | None) -> torch.Tensor:
        b, t, _ = x.shape
        n_qk = self.n_heads + self.n_kv_heads
        qkv = self.wqkv(x).view(b, t, n_qk + self.n_kv_heads, self.head_dim).transpose(1, 2)
        # q and k heads rotate together: one set of RoPE kernels per layer instead of two.
        qk = apply_rotary(qkv[:, :n_qk], cos, sin)
        q, k, v = qk[:, :self.n_heads], qk[:, self.n_heads:], qkv[:, n_qk:]
        keys, values = cache.update(layer, slot, positions, k, v, kv_len)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, enable_gqa=self.n_heads != self.n_kv_heads
        )
        result: torch.Tensor = self.wo(out.transpose(1, 2).reshape(b, t, -1))
        return result


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ffn_dim = config.ffn_dim
        self.w13 = nn.Linear(config.dim, 2 * config.ffn_dim, bias=False)  # gate and up, fused
        self.w2 = nn.Linear(config.ffn_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).split(self.ffn_dim, dim=-1)
        result: torch.Tensor = self.w2(F.silu(gate) * up)
        return result


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None, cache: KVCache, layer: int, slot: int,
                kv_len: int | None) -> torch.Tensor:
        h = x + self.attn(self.attn_norm(x), cos, sin, positions, mask, cache, layer, slot, kv_len)
        result: torch.Tensor = h + self.ffn(self.ffn_norm(h))
        return result


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", inverse_frequencies(config), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def new_cache(self, n_slots: int, length: int) -> KVCache:
        """A static KV cache for `n_slots` streams of `length` positions each."""
        return KVCache(self, n_slots, length)

    def hidden_states(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, slot: int = 0,
                      kv_len: int | None = None) -> torch.Tensor:
        """Final-normed hidden states `[B, T, dim]` for `tokens [B, T]` at `positions [B, T]`.

        `kv_len` (eager) bounds attention to the first kv_len cache positions; None (graph capture) attends
        over the whole cache with a mask, so shapes never change between steps.
        """
        b, t = tokens.shape
        span = cache.length if kv_len is None else kv_len
        mask = self._mask(positions, span, need=kv_len is None or b > 1 or t > 1)
        cos = cache.cos[positions].unsqueeze(1)
        sin = cache.sin[positions].unsqueeze(1)
        x = self.embed(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, positions, mask, cache, i, slot, kv_len)
        result: torch.Tensor = self.norm(x)
        return result

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, slot: int = 0,
                kv_len: int | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits `[B, T, vocab]` (or `[B, 1, vocab]` with last_only, which skips the LM head elsewhere)."""
        h = self.hidden_states(tokens, positions, cache, slot, kv_len)
        if last_only:
            h = h[:, -1:]
        result: torch.Tensor = self.output(h)
        return result

    def _mask(self, positions: torch.Tensor, span: int, need: bool) -> torch.Tensor | None:
        window = self.config.sliding_window
        windowed = window is not None and span > window
        if not need and not windowed:
            # One new token attending to the whole filled prefix: nothing to mask.
            return None
        keys = torch.arange(span, device=positions.device)
        allowed = keys.view(1, 1, -1) <= positions.unsqueeze(-1)
        if windowed:
            assert window is not None
            allowed &= keys.view(1, 1, -1) > positions.unsqueeze(-1) - window
        return allowed.unsqueeze(1)  # [B, 1, T, span]

    def load_weights(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Fills the model from canonical tensor names (see `weights.py`), fusing q/k/v and gate/up."""
        state: dict[str, torch.Tensor] = {"embed.weight": tensors["embed"], "norm.weight": tensors["norm"]}
        cfg = self.config
        for i in range(cfg.n_layers):
            p = f"layers.{i}."
            state[p + "attn_norm.weight"] = tensors[p + "attn_norm"]
            state[p + "ffn_norm.weight"] = tensors[p + "ffn_norm"]
            state[p + "attn.wqkv.weight"] = torch.cat([tensors[p + "wq"], tensors[p + "wk"], tensors[p + "wv"]])
            if cfg.qkv_bias:
                state[p + "attn.wqkv.bias"] = torch.cat([tensors[p + "bq"], tensors[p + "bk"], tensors[p + "bv"]])
            state[p + "attn.wo.weight"] = tensors[p + "wo"]
            state[p + "ffn.w13.weight"] = torch.cat([tensors[p + "w1"], tensors[p + "w3"]])
            state[p + "ffn.w2.weight"] = tensors[p + "w2"]
        tied = cfg.tie_embeddings or "output" not in tensors
        state["output.weight"] = tensors["embed"] if tied else tensors["output"]
        self.load_state_dict(state, strict=True, assign=True)
        if tied:
            self.output.weight = self.embed.weight  # one copy in memory, read once per token as the LM head


def build_model(config: ModelConfig, tensors: Mapping[str, torch.Tensor], device: torch.device,
                dtype: torch.dtype) -> Transformer:
    """A ready model on `device` in `dtype`; built on the meta device so weights are materialised once."""
    with torch.device("meta"):
        model = Transformer(config)
    converted = {
        name: t if name == "rope_freqs" else t.to(device=device, dtype=dtype)
        for name, t in tensors.items()
    }
    model.load_weights(converted)
    # The buffer was created on the meta device; GGUF Llama-3 files carry their scaling as `rope_freqs`.
    model.inv_freq = inverse_frequencies(config, tensors.get("rope_freqs")).to(device)
    return model.eval().requires_grad_(False)
