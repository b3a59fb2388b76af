"""A Llama-family decoder in plain PyTorch with a static, slot-based KV cache.

Layout follows gpt-fast: fused q/k/v and gate/up projections (fewer kernel launches per token, which is what
bounds small models), RMSNorm in fp32, SDPA attention. The cache is allocated once per stream set with a
leading *slot* dimension, so several streams share one batched forward (see `scheduler.py`). How the matrices
are held and multiplied (dense fp32/bf16, int8 or int4 weight-only) is the model's *compute type*
(`quantize.py`). On CPU, decode steps run the same layers through fused kernels (`fused_decode.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from kwasi_runtime.backends.llm import cpu_kernels
from kwasi_runtime.backends.llm.config import ModelConfig
from kwasi_runtime.backends.llm.fused_decode import FusedDecode, LayerWeights
from kwasi_runtime.backends.llm.quantize import (
    COMPUTE_TYPES,
    ComputeType,
    Matmul,
    Weight,
    cat_rows,
    make_embedding,
    make_head,
    make_linear,
    to_float,
)
from kwasi_runtime.backends.llm.rope import apply_rotary, cos_sin_table, inverse_frequencies


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The residual stream is fp32 in every compute type, so HF's order (normalise in fp32, cast back, then
        # scale) is one call here.
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


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

    def update(self, layer: int, slot: int | torch.Tensor, positions: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor, kv_len: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes k/v `[B, H, T, D]` at `positions` of slots `slot .. slot+B-1` (or of the rows in a `[B]` slot
        tensor); returns the readable span.

        `positions` is `[B, T]`, or for batch 1 the `[T]` row itself (selected once per forward, not per layer).
        """
        if isinstance(slot, torch.Tensor):
            # Scattered rows (a packed prefill of several streams): write by index, read a gathered copy.
            at = slot.unsqueeze(1)
            self.keys[layer][at, :, positions] = k.transpose(1, 2)
            self.values[layer][at, :, positions] = v.transpose(1, 2)
            span = self.length if kv_len is None else kv_len
            return self.keys[layer][slot, :, :span], self.values[layer][slot, :, :span]
        batch = k.shape[0]
        k_rows = self.keys[layer].narrow(0, slot, batch)
        v_rows = self.values[layer].narrow(0, slot, batch)
        if batch == 1:
            # Batch 1 (solo decode, every prefill chunk): a plain index_copy along positions, cheapest on CPU.
            index = positions if positions.dim() == 1 else positions[0]
            k_rows.index_copy_(2, index, k)
            v_rows.index_copy_(2, index, v)
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
        # Placeholders on the meta device: `Transformer.load_weights` puts the compute type's modules here.
        self.wqkv: nn.Module = nn.Linear(config.dim, q_size + 2 * kv_size, bias=config.qkv_bias)
        self.wo: nn.Module = nn.Linear(q_size, config.dim, bias=False)

    def forward(self, x: torch.Tensor, b: int, t: int, cos: torch.Tensor, sin: torch.Tensor,
                positions: torch.Tensor, mask: torch.Tensor | None, cache: KVCache, layer: int,
                slot: int | torch.Tensor, kv_len: int | None) -> torch.Tensor:
        """x is the flat `[B*T, dim]` residual stream of `b` sequences of `t` tokens."""
        n_qk = self.n_heads + self.n_kv_heads
        # Matrices return their kernel's dtype (bf16 unless f32); q/k/v join the fp32 residual stream here.
        qkv = self.wqkv(x)
        if qkv.dtype != x.dtype:
            qkv = qkv.to(x.dtype)
        qkv = qkv.view(b, t, n_qk + self.n_kv_heads, self.head_dim).transpose(1, 2)
        # q and k heads rotate together: one set of RoPE kernels per layer instead of two.
        qk, v = torch.split(qkv, [n_qk, self.n_kv_heads], dim=1)
        q, k = torch.split(apply_rotary(qk, cos, sin), [self.n_heads, self.n_kv_heads], dim=1)
        keys, values = cache.update(layer, slot, positions, k, v, kv_len)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, enable_gqa=self.n_heads != self.n_kv_heads
        )
        result: torch.Tensor = self.wo(out.transpose(1, 2).reshape(b * t, -1))
        return result


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ffn_dim = config.ffn_dim
        self.w13: nn.Module = nn.Linear(config.dim, 2 * config.ffn_dim, bias=False)  # gate and up, fused
        self.w2: nn.Module = nn.Linear(config.ffn_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # silu(gate) * up in fp32: doing it in bf16 cost 0.25 points of top-1 agreement (test_accuracy.py).
        gate, up = self.w13(x).float().split(self.ffn_dim, dim=-1)
        result: torch.Tensor = self.w2(F.silu(gate) * up)
        return result


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, b: int, t: int, cos: torch.Tensor, sin: torch.Tensor,
                positions: torch.Tensor, mask: torch.Tensor | None, cache: KVCache, layer: int,
                slot: int | torch.Tensor, kv_len: int | None) -> torch.Tensor:
        # The sublayers return their last kernel's dtype; adding to the fp32 residual promotes in the same op.
        h = x + self.attn(self.attn_norm(x), b, t, cos, sin, positions, mask, cache, layer, slot, kv_len)
        result: torch.Tensor = h + self.ffn(self.ffn_norm(h))
        return result


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig, compute: ComputeType = COMPUTE_TYPES["f32"]) -> None:
        super().__init__()
        self.config = config
        self.compute = compute
        self.embed: nn.Module = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output: nn.Module = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", inverse_frequencies(config), persistent=False)
        # Decode steps through the fused CPU kernels (`build_model` sets it where they apply); None: eager ops.
        self.fused: FusedDecode | None = None

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Activations, norms and KV cache (integer compute types keep integer weights beside them)."""
        return self.compute.dtype

    def new_cache(self, n_slots: int, length: int) -> KVCache:
        """A static KV cache for `n_slots` streams of `length` positions each."""
        return KVCache(self, n_slots, length)

    def hidden_states(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                      slot: int | torch.Tensor = 0, kv_len: int | None = None, masked: bool = False) -> torch.Tensor:
        """Final-normed hidden states `[B, T, dim]` for `tokens [B, T]` at `positions [B, T]`, in cache rows
        `slot .. slot+B-1` (or the rows of a `[B]` tensor).

        `kv_len` bounds attention to the first kv_len cache positions; None attends over the whole cache. With
        `masked` (a captured graph's fixed span) positions past each token's own are masked even at batch 1.
        """
        b, t = tokens.shape
        if (self.fused is not None and t == 1 and kv_len is not None and not masked and isinstance(slot, int)
                and positions.dtype == torch.int64 and not torch.compiler.is_compiling()):
            x = self.embed(tokens.view(-1)).contiguous()  # a new tensor: the kernels add into it in place
            hidden = self.fused.hidden_states(x, positions.reshape(-1).contiguous(), cache.keys, cache.values,
                                              cache.cos, cache.sin, slot, kv_len,
                                              functools.partial(self._mask, positions, kv_len, need=b > 1))
            return hidden.view(b, 1, -1)
        span = cache.length if kv_len is None else kv_len
        mask = self._mask(positions, span, need=kv_len is None or masked or b > 1 or t > 1)
        cos = cache.cos[positions].unsqueeze(1)
        sin = cache.sin[positions].unsqueeze(1)
        # The residual stream is kept flat, `[B*T, dim]`: the matrices then take it without reshapes.
        x = self.embed(tokens.view(-1))
        write_at = positions[0] if b == 1 else positions
        for i, layer in enumerate(self.layers):
            x = layer(x, b, t, cos, sin, write_at, mask, cache, i, slot, kv_len)
        result: torch.Tensor = self.norm(x).view(b, t, -1)
        return result

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, slot: int | torch.Tensor = 0,
                kv_len: int | None = None, last_only: bool = False, masked: bool = False) -> torch.Tensor:
        """Logits `[B, T, vocab]` (or `[B, 1, vocab]` with last_only, which skips the LM head elsewhere)."""
        h = self.hidden_states(tokens, positions, cache, slot, kv_len, masked)
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

    def load_weights(self, tensors: Mapping[str, Weight], device: torch.device) -> None:
        """Fills the model from canonical tensor names (see `checkpoint.py`), fusing q/k/v and gate/up; each
        matrix becomes the module its compute type calls for (`quantize.make_linear`)."""
        cfg, compute = self.config, self.compute

        def vector(name: str) -> nn.Parameter:
            return nn.Parameter(to_float(tensors[name]).to(device=device, dtype=compute.dtype), requires_grad=False)

        for i, block in enumerate(self.layers):
            assert isinstance(block, Block)
            p = f"layers.{i}."
            block.attn_norm.weight = vector(p + "attn_norm")
            block.ffn_norm.weight = vector(p + "ffn_norm")
            bias = torch.cat([to_float(tensors[p + n]) for n in ("bq", "bk", "bv")]) if cfg.qkv_bias else None
            block.attn.wqkv = make_linear(cat_rows([tensors[p + "wq"], tensors[p + "wk"], tensors[p + "wv"]]),
                                          bias, compute, device)
            block.attn.wo = make_linear(tensors[p + "wo"], None, compute, device)
            block.ffn.w13 = make_linear(cat_rows([tensors[p + "w1"], tensors[p + "w3"]]), None, compute, device)
            block.ffn.w2 = make_linear(tensors[p + "w2"], None, compute, device)
        self.norm.weight = vector("norm")
        tied = cfg.tie_embeddings or "output" not in tensors
        self.output = make_head(tensors["embed"] if tied else tensors["output"], compute, device, None)
        self.embed = make_embedding(tensors["embed"], self.output if tied else None, compute, device)


def build_model(config: ModelConfig, tensors: Mapping[str, Weight], device: torch.device,
                compute: ComputeType) -> Transformer:
    """A ready model on `device` under `compute`; built on the meta device so weights are materialised once."""
    with torch.device("meta"):
        model = Transformer(config, compute)
    model.load_weights(tensors, device)
    # The buffer was created on the meta device; GGUF Llama-3 files carry their scaling as `rope_freqs`.
    rope_freqs = tensors.get("rope_freqs")
    model.inv_freq = inverse_frequencies(config, None if rope_freqs is None else to_float(rope_freqs)).to(device)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not left, f"weights never loaded: {left}"
    if device.type == "cpu":
        model.fused = fused_decode(model)
    return model.eval().requires_grad_(False)


def fused_decode(model: Transformer) -> FusedDecode | None:
    """The model's decode layers over the fused CPU kernels, when the kernels load and take this model."""
    kernels = cpu_kernels.load()
    if kernels is None:
        return None
    layers = []
    for block in model.layers:
        assert isinstance(block, Block)
        matrices = [m for m in (block.attn.wqkv, block.attn.wo, block.ffn.w13, block.ffn.w2)
                    if isinstance(m, (Matmul, nn.Linear))]
        if len(matrices) < 4:
            return None  # a matrix the kernels' calling code does not know
        layers.append(LayerWeights(block.attn_norm.weight, block.ffn_norm.weight, *matrices))
    norms = [model.norm.weight, *(w for layer in layers for w in (layer.attn_norm, layer.ffn_norm))]
    if not FusedDecode.supported(model.dtype, model.compute.matmul, norms):
        return None
    return FusedDecode(model.config, kernels, layers, model.norm.weight, model.compute.matmul)
