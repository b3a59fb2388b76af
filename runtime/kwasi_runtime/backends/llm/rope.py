"""Rotary position embeddings in the Hugging Face "rotate_half" (NeoX) layout.

GGUF llama files store q/k rows permuted for llama.cpp's interleaved layout; the GGUF loader undoes that,
so one RoPE implementation serves both formats.
"""

from __future__ import annotations

import math

import torch

from kwasi_runtime.backends.llm.config import Llama3RopeScaling, ModelConfig


def inverse_frequencies(config: ModelConfig, rope_freqs: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 `[head_dim // 2]` inverse frequencies, with Llama-3 scaling from the config or a GGUF tensor."""
    d = config.head_dim
    # int64 arange then float, as HF does: float arange can differ in the last bit.
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    if rope_freqs is not None:
        # GGUF keeps Llama-3 scaling as per-frequency divisors (1, factor, or the smoothed value).
        return inv / rope_freqs.float().reshape(-1)
    if config.rope_scaling is not None:
        return _llama3_scale(inv, config.rope_scaling)
    return inv


def _llama3_scale(inv: torch.Tensor, s: Llama3RopeScaling) -> torch.Tensor:
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    # Long wavelengths are slowed down by `factor`, short ones kept, the band between interpolated smoothly.
    scaled = torch.where(wavelen > low_wavelen, inv / s.factor, inv)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(mid, blended, scaled)


def cos_sin_table(inv_freq: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 `[length, head_dim]` cos and *signed* sin tables (frequencies duplicated across both halves; the
    first half of sin negated, so that `apply_rotary` needs a roll instead of rotate_half's slices and cat)."""
    positions = torch.arange(length, dtype=torch.int64).float()
    freqs = torch.outer(positions, inv_freq.float())
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin()
    sin[:, : inv_freq.numel()] *= -1
    return emb.cos(), sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x `[B, H, T, D]`; cos/signed sin `[B, 1, T, D]` in x's dtype (from `cos_sin_table`).

    HF's x·cos + rotate_half(x)·sin with rotate_half(x) = cat(-x₂, x₁) = roll(x, D/2) with its first half negated:
    three kernels per call instead of six.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)
