"""CPU decode steps (one new token per row) with the work between the matrices done by `cpu_kernels.c`.

Per layer that is four matrix calls (torch's int4/int8/dense kernels, on its OpenMP team) and three kernel
calls: residual add + RMSNorm, RoPE + KV write + attention, silu(gate)·up. Eager torch ran ~30 ops a layer
there; SmolLM2-135M int4 went from 12.4-12.9 to 6.9-8.0 ms a token on 2 cores (bench/README.md, issue 14).
The kernel attends single-threaded: past `ATTEND_PAIRS` rows x keys torch's SDPA on all threads is faster, so
there the kernel only rotates and writes, and SDPA attends. Numerics match the eager path (fp32 residual
stream, activations rounded to the matrices' dtype where eager casts them); `test_fused_decode.py` holds them to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kwasi_runtime.backends.llm.config import ModelConfig
from kwasi_runtime.backends.llm.cpu_kernels import CpuKernels
from kwasi_runtime.backends.llm.quantize import Matmul

# Measured on 2 cores (head_dim 64, 9 heads): the kernel 27 us and SDPA 28 us at 1 x 256 keys, SDPA ahead
# beyond; the kernel also saves SDPA's surrounding view ops (~10 us), hence a little above the crossover.
ATTEND_PAIRS = 384


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: torch.Tensor
    ffn_norm: torch.Tensor
    # The compute type's matrices (quantize.py), or plain fp32 `nn.Linear` for `f32`.
    wqkv: Matmul | nn.Linear
    wo: Matmul | nn.Linear
    w13: Matmul | nn.Linear
    w2: Matmul | nn.Linear


def _bf16(t: torch.Tensor) -> int:
    return int(t.dtype == torch.bfloat16)


class FusedDecode:
    """The decode layers of one model over the kernels; `hidden_states` takes the embedded tokens."""

    def __init__(self, config: ModelConfig, kernels: CpuKernels, layers: Sequence[LayerWeights],
                 final_norm: torch.Tensor, activations: torch.dtype) -> None:
        self.config = config
        self.k = kernels
        self.layers = list(layers)
        self.final_norm = final_norm
        self.activations = activations  # the matrices' input dtype: bf16 or fp32

    @staticmethod
    def supported(dtype: torch.dtype, activations: torch.dtype, norms: Sequence[torch.Tensor]) -> bool:
        """Whether the kernels take this model: fp32 residual stream, cache and norm weights, and bf16 or fp32
        matrix inputs."""
        return (dtype == torch.float32 and activations in (torch.float32, torch.bfloat16)
                and all(w.dtype == torch.float32 and w.is_contiguous() for w in norms))

    def hidden_states(self, x: torch.Tensor, positions: torch.Tensor, keys: Sequence[torch.Tensor],
                      values: Sequence[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor, slot: int, kv_len: int,
                      mask: Callable[[], torch.Tensor | None]) -> torch.Tensor:
        """Final-normed fp32 `[B, dim]` from embedded fp32 `x [B, dim]` (updated in place: the residual stream)
        at `positions [B]` (int64) of cache rows slot .. slot+B-1; `mask()` makes SDPA's mask for those rows over
        kv_len keys, when SDPA attends."""
        cfg, k = self.config, self.k
        b = x.shape[0]
        heads, kv_heads, head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        slots, length = keys[0].shape[0], keys[0].shape[2]
        attend = b * kv_len <= ATTEND_PAIRS
        act = self.activations
        h = torch.empty(b, cfg.dim, dtype=act)
        # The attention's output: the matrices' input when the kernel attends, else fp32 rotated queries.
        a = torch.empty(b, heads * head_dim, dtype=act if attend else torch.float32)
        s = torch.empty(b, cfg.ffn_dim, dtype=act)
        act_bf16, a_bf16 = _bf16(h), _bf16(a)
        xp, hp, ap, sp, pp = x.data_ptr(), h.data_ptr(), a.data_ptr(), s.data_ptr(), positions.data_ptr()
        cp, snp = cos.data_ptr(), sin.data_ptr()
        eps, window = cfg.norm_eps, cfg.sliding_window or 0
        sdpa_mask = None if attend else mask()
        delta: torch.Tensor | None = None
        for i, layer in enumerate(self.layers):
            dp = 0 if delta is None else delta.data_ptr()
            k.add_rms_norm(xp, dp, 0 if delta is None else _bf16(delta), layer.attn_norm.data_ptr(), eps, b,
                           cfg.dim, hp, act_bf16)
            qkv = layer.wqkv.forward(h)
            if k.rope_attend(qkv.data_ptr(), _bf16(qkv), b, pp, cp, snp, keys[i].data_ptr(), values[i].data_ptr(),
                             slots, slot, heads, kv_heads, head_dim, length, window, int(attend), ap, a_bf16):
                raise IndexError(f"decode rows {slot}..{slot + b - 1} at positions {positions.tolist()} lie outside "
                                 f"a cache of {slots} rows x {length} positions")
            attn = a if attend else self._sdpa(a, keys[i], values[i], slot, kv_len, sdpa_mask)
            o = layer.wo.forward(attn)
            k.add_rms_norm(xp, o.data_ptr(), _bf16(o), layer.ffn_norm.data_ptr(), eps, b, cfg.dim, hp, act_bf16)
            gate_up = layer.w13.forward(h)
            k.silu_mul(gate_up.data_ptr(), _bf16(gate_up), b, cfg.ffn_dim, sp, act_bf16)
            delta = layer.w2.forward(s)
        assert delta is not None
        out = torch.empty(b, cfg.dim, dtype=torch.float32)
        k.add_rms_norm(xp, delta.data_ptr(), _bf16(delta), self.final_norm.data_ptr(), eps, b, cfg.dim,
                       out.data_ptr(), 0)
        return out

    def _sdpa(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slot: int, kv_len: int,
              mask: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        b = q.shape[0]
        k_rows = keys.narrow(0, slot, b)[:, :, :kv_len]
        v_rows = values.narrow(0, slot, b)[:, :, :kv_len]
        out = F.scaled_dot_product_attention(q.view(b, cfg.n_heads, 1, cfg.head_dim), k_rows, v_rows,
                                             attn_mask=mask, enable_gqa=cfg.n_heads != cfg.n_kv_heads)
        return out.view(b, -1)
