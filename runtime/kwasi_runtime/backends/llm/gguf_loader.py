"""GGUF files (llama and qwen2 architectures) read with the `gguf` package.

Q8_0, Q4_0 and Q4_1 matrices stay integers (`BlockQuant`): the compute type decides what they become, and
int8/int4 keep them without a float detour. Every other type is dequantized to fp32 by gguf-py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, ReaderTensor
from gguf.quants import dequantize

from kwasi_runtime.backends.llm.checkpoint import Checkpoint
from kwasi_runtime.backends.llm.config import ModelConfig
from kwasi_runtime.backends.llm.quantize import GROUP, BlockQuant, Weight
from kwasi_runtime.backends.llm.tokenizer import from_gguf

_GLOBAL_NAMES = {"token_embd": "embed", "output_norm": "norm", "output": "output", "rope_freqs": "rope_freqs"}
_BLOCK_NAMES = {
    "attn_norm.weight": "attn_norm",
    "ffn_norm.weight": "ffn_norm",
    "attn_q.weight": "wq",
    "attn_k.weight": "wk",
    "attn_v.weight": "wv",
    "attn_q.bias": "bq",
    "attn_k.bias": "bk",
    "attn_v.bias": "bv",
    "attn_output.weight": "wo",
    "ffn_gate.weight": "w1",
    "ffn_up.weight": "w3",
    "ffn_down.weight": "w2",
}


def read_metadata(reader: GGUFReader) -> dict[str, Any]:
    return {name: field.contents() for name, field in reader.fields.items()}


def load_gguf(path: Path, dtype: torch.dtype | None = None) -> Checkpoint:
    reader = GGUFReader(path)
    meta = read_metadata(reader)
    names = {t.name for t in reader.tensors}
    config = ModelConfig.from_gguf(meta, has_output="output.weight" in names,
                                   has_qkv_bias="blk.0.attn_q.bias" in names)
    tensors: dict[str, Weight] = {}
    for t in reader.tensors:
        name = canonical_name(t.name)
        if name is None:
            continue
        weight: Weight = _blocks(t) or _to_float(t)
        if meta["general.architecture"] == "llama":
            weight = _unpermute(name, weight, config)
        if isinstance(weight, torch.Tensor) and dtype is not None and name != "rope_freqs":
            weight = weight.to(dtype)
        tensors[name] = weight
    return Checkpoint(config=config, tensors=tensors, tokenizer=from_gguf(meta))


def canonical_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.partition(".")
    if base in _GLOBAL_NAMES and suffix == "weight":
        return _GLOBAL_NAMES[base]
    if base == "blk":
        index, _, rest = suffix.partition(".")
        if rest in _BLOCK_NAMES:
            return f"layers.{index}.{_BLOCK_NAMES[rest]}"
    return None


def _to_float(t: ReaderTensor) -> torch.Tensor:
    # gguf shapes are in GGML `ne` order (innermost first); PyTorch wants the reverse.
    shape = tuple(int(d) for d in reversed(t.shape))
    values = np.ascontiguousarray(dequantize(np.asarray(t.data), t.tensor_type), dtype=np.float32)
    if not values.flags.writeable:  # float tensors come back as views of the read-only memory map
        values = values.copy()
    return torch.from_numpy(values.reshape(shape))


# Bytes per block of 32: the fp16 scale d (Q4_1: then the fp16 minimum m), then the packed values.
_BLOCK_BYTES = {GGMLQuantizationType.Q8_0: 34, GGMLQuantizationType.Q4_0: 18, GGMLQuantizationType.Q4_1: 20}


def _blocks(t: ReaderTensor) -> BlockQuant | None:
    """A Q8_0 / Q4_0 / Q4_1 matrix as integers plus per-block scale and offset (GGML's block_q8_0 / q4_0 / q4_1)."""
    kind = GGMLQuantizationType(t.tensor_type)
    if kind not in _BLOCK_BYTES or len(t.shape) != 2:
        return None
    k, n = (int(d) for d in t.shape)  # GGML `ne` order
    raw = np.asarray(t.data).reshape(-1).view(np.uint8).reshape(n * k // GROUP, _BLOCK_BYTES[kind])
    scale = torch.from_numpy(raw[:, 0:2].copy().view(np.float16).astype(np.float32)).view(n, k // GROUP)
    if kind == GGMLQuantizationType.Q8_0:
        q = torch.from_numpy(raw[:, 2:].copy().view(np.int8)).view(n, k)
        return BlockQuant(q, scale, None, bits=8)
    start = 2 if kind == GGMLQuantizationType.Q4_0 else 4
    packed = raw[:, start:]
    # Byte j of a block holds value j in its low nibble and value j + 16 in its high nibble.
    values = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.int8)
    q = torch.from_numpy(values).view(n, k)
    if kind == GGMLQuantizationType.Q4_0:
        offset = -8 * scale  # Q4_0 values are q - 8
    else:
        offset = torch.from_numpy(raw[:, 2:4].copy().view(np.float16).astype(np.float32)).view(n, k // GROUP)
    return BlockQuant(q, scale, offset, bits=4)


def _unpermute(name: str, w: Weight, config: ModelConfig) -> Weight:
    """llama.cpp's converter reorders q/k rows of each head for interleaved RoPE; restore HF's half-split order."""
    if name.endswith((".wq", ".bq")):
        heads = config.n_heads
    elif name.endswith((".wk", ".bk")):
        heads = config.n_kv_heads
    else:
        return w
    rows = w.shape[0]
    # Forward was reshape(heads, 2, hd/2).swap(1, 2); the inverse splits (heads, hd/2, 2) and swaps back.
    order = torch.arange(rows).reshape(heads, rows // heads // 2, 2).transpose(1, 2).reshape(-1)
    return w.rows(order) if isinstance(w, BlockQuant) else w[order]
