"""Weight-only quantized compute, as gpt-fast does it: integer weights, floating-point activations.

A *compute type* says how a model's matrices are held and multiplied; the residual stream, norms, attention
and KV cache stay fp32 in every type (bf16 there cost 2-3 points of top-1 agreement with the reference):

| name   | matrices                                                            | multiplied in |
|--------|---------------------------------------------------------------------|---------------|
| `f32`  | dense fp32: the reference every other type is checked against       | fp32          |
| `bf16` | dense bf16                                                          | bf16          |
| `int8` | int8 per output row (`aten._weight_int8pack_mm`)                    | bf16          |
| `int4` | int4 in groups of 32 (`aten._weight_int4pack_mm` "tinygemm", and its CPU twin); LM head int8 | bf16 |

Batch-1 decode reads every weight once per token, so fewer weight bytes is the lever; the integer kernels
dequantize in registers. GGML's legacy blocks map onto these exactly where the arithmetic allows: Q4_0/Q4_1
blocks of 32 *are* int4 groups of 32 (scale = d, zero = m + 8·d), so `int4` keeps them bit for bit (scales
rounded to bf16). Q8_0's 32-wide block scales must merge into one scale per row for the int8 kernel, which
requantizes; so does every other source (other GGML types, dense checkpoints).

Token embeddings stay in their source format (`TokenRows`: Q8_0 blocks, or the dense table), so lookups are
exact, and the non-f32 LM head re-scores its top `RESCORE` candidates exactly from those rows: greedy
decoding then picks what the fp32 head would, whatever the fast head's rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

GROUP = 32  # int4 group size: GGML's legacy block length, so Q4_0/Q4_1 map exactly
# Up to this many rows (decode batches, prompt chunks) the CPU weight-only kernels beat dequantizing every
# matrix to bf16 for oneDNN's (AMX) GEMM; above it they are compute-bound and slower. Measured on the whole
# SmolLM2-135M forward (bench/README.md, "prefill"): int4 kernel 99 ms at 42 rows, 465 ms at 256 and 1,604 ms
# at 511 against 345 / 546 / 853 ms dequantized; int8 81 vs 114 ms at 16 rows, 159 vs 138 ms at 42.
CPU_KERNEL_MAX_ROWS = {"int8": 16, "int4": 256}
RESCORE = 16  # LM-head candidates re-scored exactly per position


@dataclass(frozen=True)
class ComputeType:
    name: str
    weights: Literal["dense", "int8", "int4"]
    matmul: torch.dtype  # what the matrices are multiplied in
    dtype: torch.dtype = torch.float32  # residual stream, norms, attention, KV cache

    @property
    def exact(self) -> bool:
        return self.weights == "dense" and self.matmul == torch.float32


COMPUTE_TYPES = {
    "f32": ComputeType("f32", "dense", torch.float32),
    "bf16": ComputeType("bf16", "dense", torch.bfloat16),
    "int8": ComputeType("int8", "int8", torch.bfloat16),
    "int4": ComputeType("int4", "int4", torch.bfloat16),
}
# The fastest type that passes the accuracy gate (tests/runtime/backends/llm/test_accuracy.py), per device;
# bench/README.md records the measurements behind the choice.
DEFAULT_COMPUTE = {"cpu": "int4", "cuda": "bf16"}
# Dense bf16 is a GPU type: on CPU its matrix-vector products ran slower than fp32 and it fell below the gate
# (top-1 0.989: bf16 weights *and* bf16 kernel outputs), so the CPU offers f32 and the integer types.
DEVICE_TYPES = {"cpu": ("f32", "int8", "int4")}


def compute_type(name: str | None, device: torch.device) -> ComputeType:
    """The named type, or the device's default for None / "" / "auto"; ValueError for a name unknown (or not
    offered) on that device."""
    if not name or name == "auto":
        name = DEFAULT_COMPUTE.get(device.type, "f32")
    offered = DEVICE_TYPES.get(device.type, tuple(COMPUTE_TYPES))
    if name not in offered:
        raise ValueError(f"compute-type {name!r} is not offered on {device.type} (auto, {', '.join(offered)})")
    return COMPUTE_TYPES[name]


@dataclass
class BlockQuant:
    """A GGML Q8_0 / Q4_0 / Q4_1 matrix kept as integers: value = q * scale + offset, per block of 32 in a row.

    q is int8 `[N, K]` (Q8_0: -127..127, Q4_x: 0..15); scale and offset are fp32 `[N, K / 32]` (offset is None
    for Q8_0, -8·scale for Q4_0, the block minimum for Q4_1).
    """

    q: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor | None
    bits: int

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def dequantize(self) -> torch.Tensor:
        return dequantize_rows(self.q, self.scale, self.offset)

    def rows(self, order: torch.Tensor) -> BlockQuant:
        """The rows in `order` (q/k un-permutation moves whole rows; blocks run along a row)."""
        off = None if self.offset is None else self.offset[order]
        return BlockQuant(self.q[order], self.scale[order], off, self.bits)


Weight = torch.Tensor | BlockQuant


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """fp32 values of block-quantized rows `[..., K]` with per-block `[..., K/32]` scale (and offset)."""
    blocks = q.reshape(*q.shape[:-1], -1, GROUP).float() * scale.unsqueeze(-1)
    if offset is not None:
        blocks += offset.unsqueeze(-1)
    return blocks.flatten(-2)


def cat_rows(parts: Sequence[Weight]) -> Weight:
    """Row-wise concatenation (fused q/k/v and gate/up); mixed formats fall back to fp32."""
    blocks = [p for p in parts if isinstance(p, BlockQuant)]
    if len(blocks) == len(parts) and len({(b.bits, b.offset is None) for b in blocks}) == 1:
        offsets = [b.offset for b in blocks if b.offset is not None]
        return BlockQuant(torch.cat([b.q for b in blocks]), torch.cat([b.scale for b in blocks]),
                          torch.cat(offsets) if offsets else None, blocks[0].bits)
    return torch.cat([to_float(p) for p in parts])


def to_float(w: Weight) -> torch.Tensor:
    return w.dequantize() if isinstance(w, BlockQuant) else w.float()


def int8_rows(w: Weight) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: (int8 `[N, K]`, fp32 scales `[N]`)."""
    values = to_float(w)
    scales = (values.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(values / scales.unsqueeze(1)).clamp(-127, 127).to(torch.int8)
    return q, scales


def int4_groups(w: Weight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group of 32: (int32 `[N, K]` in 0..15, scales, zeros `[N, K/32]`), w = (q-8)·s + z."""
    if isinstance(w, BlockQuant) and w.bits == 4:
        offset = w.offset if w.offset is not None else -8 * w.scale
        return w.q.to(torch.int32), w.scale, offset + 8 * w.scale
    values = to_float(w)
    blocks = values.view(values.shape[0], -1, GROUP)
    lo, hi = blocks.amin(dim=-1), blocks.amax(dim=-1)
    scales = ((hi - lo) / 15).clamp(min=1e-8)
    q = torch.round((blocks - lo.unsqueeze(-1)) / scales.unsqueeze(-1)).clamp(0, 15).to(torch.int32)
    return q.flatten(-2), scales, lo + 8 * scales


class Matmul(nn.Module):
    """y = x @ Wᵀ (+ bias) in the kernel's dtype: x is cast to it, y is returned in it (the caller promotes)."""

    def __init__(self, out_features: int, in_features: int, dtype: torch.dtype, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features, self.kernel_dtype = out_features, in_features, dtype
        self.bias: torch.Tensor | None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        y = self.matmul(flat if flat.dtype == self.kernel_dtype else flat.to(self.kernel_dtype))
        if self.bias is not None:
            y = y + self.bias  # fp32 bias: y joins the residual stream's dtype
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def matmul(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DenseLinear(Matmul):
    """Dense bf16 (GPU). cuBLAS can write the fp32 accumulator instead of rounding it to bf16 (`mm.dtype`); that
    is used where the build has it, since the product joins the fp32 residual stream anyway."""

    def __init__(self, w: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(w.shape[0], w.shape[1], w.dtype, bias)
        self.weight: torch.Tensor
        self.register_buffer("weight", w)
        self.fp32_out = w.device.type == "cuda" and _has_fp32_out_mm(w)

    def matmul(self, flat: torch.Tensor) -> torch.Tensor:
        if self.fp32_out:
            y: torch.Tensor = torch.mm(flat, self.weight.t(), out_dtype=torch.float32)
            return y
        return F.linear(flat, self.weight)


def _has_fp32_out_mm(w: torch.Tensor) -> bool:
    try:
        torch.mm(w[:1], w[:1].t(), out_dtype=torch.float32)
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return True


class Int8Linear(Matmul):
    """int8 weights `[N, K]` with per-row scales in the kernel dtype."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(q.shape[0], q.shape[1], scales.dtype, bias)
        self.weight: torch.Tensor
        self.scales: torch.Tensor
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales)

    def matmul(self, flat: torch.Tensor) -> torch.Tensor:
        if flat.device.type == "cpu" and flat.shape[0] <= CPU_KERNEL_MAX_ROWS["int8"]:
            y: torch.Tensor = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales)
            return y
        # CUDA's _weight_int8pack_mm is a naive fp32 kernel, and on CPU many rows are faster dense: the form
        # gpt-fast uses (under torch.compile the dequantization fuses into the GEMM).
        return F.linear(flat, self.weight.to(flat.dtype)) * self.scales


class Int4Linear(Matmul):
    """tinygemm int4: packed weights plus `[K/32, N, 2]` scales and zeros in the kernel dtype.

    On CPU it also keeps the values two to a byte in plain row order (`nibbles`), from which many-row inputs
    are multiplied dense: the CPU kernel's packed layout cannot be read back.
    """

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bias: torch.Tensor | None,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(q.shape[0], q.shape[1], dtype, bias)
        self.on_cpu = device.type == "cpu"
        # Two values a byte, the even column in the high nibble (the layout the CUDA packer takes).
        nibbles = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        if self.on_cpu:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack(nibbles.to(device), inner_k_tiles(self.in_features))
        self.weight: torch.Tensor
        self.nibbles: torch.Tensor | None
        self.scales_and_zeros: torch.Tensor
        self.register_buffer("weight", packed.to(device))
        self.register_buffer("nibbles", nibbles if self.on_cpu else None)
        sz = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("scales_and_zeros", sz.to(device=device, dtype=dtype))

    def matmul(self, flat: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor
        if not self.on_cpu:
            y = torch.ops.aten._weight_int4pack_mm(flat, self.weight, GROUP, self.scales_and_zeros)
        elif flat.shape[0] <= CPU_KERNEL_MAX_ROWS["int4"]:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight, GROUP, self.scales_and_zeros)
        else:
            y = F.linear(flat, self.dense())
        return y

    def dense(self) -> torch.Tensor:
        """The dequantized `[N, K]` matrix in the kernel dtype, (q - 8) * scale + zero per group (CPU only)."""
        assert self.nibbles is not None
        n, k = self.out_features, self.in_features
        q = torch.stack([self.nibbles >> 4, self.nibbles & 0x0F], dim=-1).view(n, k // GROUP, GROUP)
        scales, zeros = self.scales_and_zeros.transpose(0, 1).unbind(-1)
        w = torch.addcmul(zeros.unsqueeze(-1), q.to(self.kernel_dtype) - 8, scales.unsqueeze(-1))
        return w.reshape(n, k)


def int8_fits(shape: torch.Size) -> bool:
    """torch 2.12's CPU int8 kernel needs K in multiples of 16: other K give wrong sums or crash (K = 36)."""
    return shape[1] % 16 == 0


def int4_fits(shape: torch.Size, device: torch.device) -> bool:
    """The kernels' shape rules: K in whole groups, N a multiple of 16 (CPU) or of tinygemm's 8-wide tiles."""
    n, k = shape
    return k % GROUP == 0 and n % (16 if device.type == "cpu" else 8) == 0


def inner_k_tiles(k: int) -> int:
    """tinygemm packs K in tiles of 16 x innerKTiles (2, 4 or 8): the widest that divides K (576 = 36 x 16: 4)."""
    return next(t for t in (8, 4, 2) if k % (16 * t) == 0)


def make_linear(w: Weight, bias: torch.Tensor | None, compute: ComputeType, device: torch.device,
                head: bool = False) -> nn.Module:
    """The module for one weight matrix under `compute`; shapes a kernel cannot take stay dense."""
    b = None if bias is None else bias.to(device=device, dtype=compute.dtype)
    if compute.exact:
        linear = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        linear.weight = nn.Parameter(to_float(w).to(device), requires_grad=False)
        if b is not None:
            linear.bias = nn.Parameter(b, requires_grad=False)
        return linear
    kind = compute.weights
    if kind == "int4" and (head or not int4_fits(w.shape, device)):
        kind = "int8"  # llama.cpp keeps the output matrix at >= 6 bits too
    if kind == "int8" and not (int8_fits(w.shape) or device.type != "cpu"):
        kind = "dense"
    if kind == "int8":
        q, scales = int8_rows(w)
        return Int8Linear(q.to(device), scales.to(device=device, dtype=compute.matmul), b)
    if kind == "int4":
        q4, s4, z4 = int4_groups(w)
        return Int4Linear(q4, s4, z4, b, compute.matmul, device)
    return DenseLinear(to_float(w).to(device=device, dtype=compute.matmul), b)


class TokenRows(nn.Module):
    """A `[V, D]` token table in its source format (Q8_0/Q4_x blocks, or dense): exact fp32 rows on demand.

    The embedding lookup, and the exact re-scoring of a quantized LM head's candidates.
    """

    def __init__(self, w: Weight, device: torch.device) -> None:
        super().__init__()
        self.q: torch.Tensor
        self.scale: torch.Tensor | None
        self.offset: torch.Tensor | None
        if isinstance(w, BlockQuant):
            self.register_buffer("q", w.q.to(device))
            self.register_buffer("scale", w.scale.to(device))
            self.register_buffer("offset", None if w.offset is None else w.offset.to(device))
        else:
            self.register_buffer("q", w.to(device))  # dense: kept in its loaded dtype
            self.register_buffer("scale", None)
            self.register_buffer("offset", None)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = self.q[tokens]  # indexing, not F.embedding: CUDA's embedding kernel takes no int8 table
        if self.scale is None:
            return rows.float()
        offset = None if self.offset is None else self.offset[tokens]
        return dequantize_rows(rows, self.scale[tokens], offset)


class RescoredHead(nn.Module):
    """A fast (quantized or bf16) LM head whose top `RESCORE` logits per position are recomputed in fp32 from
    the exact rows: the argmax is then the fp32 head's whenever it is among the fast head's candidates."""

    def __init__(self, fast: nn.Module, exact: TokenRows) -> None:
        super().__init__()
        self.fast = fast
        self.exact = exact

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fast(h).float()
        top = logits.topk(RESCORE, dim=-1).indices  # [..., k]
        rows = self.exact(top)  # [..., k, D]
        exact = torch.matmul(rows, h.float().unsqueeze(-1)).squeeze(-1)
        return logits.scatter_(-1, top, exact)


def make_head(w: Weight, compute: ComputeType, device: torch.device, rows: TokenRows | None) -> nn.Module:
    """The LM head: the plain fp32 matrix for `f32`, else the fast matrix re-scored from exact `rows`."""
    fast = make_linear(w, None, compute, device, head=True)
    if compute.exact:
        return fast
    return RescoredHead(fast, rows if rows is not None else TokenRows(w, device))


def make_embedding(w: Weight, head: nn.Module | None, compute: ComputeType, device: torch.device) -> nn.Module:
    """The token table; `head` is the LM head when the embeddings are tied to it (its weights are shared)."""
    if isinstance(head, RescoredHead):
        return head.exact
    if isinstance(head, nn.Linear):
        table = nn.Embedding(w.shape[0], w.shape[1], device="meta")
        table.weight = head.weight  # one copy in memory, read once per token as the LM head
        return table
    if compute.exact:
        table = nn.Embedding(w.shape[0], w.shape[1], device="meta")
        table.weight = nn.Parameter(to_float(w).to(device), requires_grad=False)
        return table
    return TokenRows(w, device)
