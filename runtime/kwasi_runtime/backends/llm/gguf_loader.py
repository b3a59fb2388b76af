"""GGUF files (llama and qwen2 architectures) read with the `gguf` package and dequantized to fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader, ReaderTensor
from gguf.quants import dequantize

from kwasi_runtime.backends.llm.checkpoint import Checkpoint
from kwasi_runtime.backends.llm.config import ModelConfig
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
    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = canonical_name(t.name)
        if name is None:
            continue
        tensor = _to_float(t)
        if meta["general.architecture"] == "llama":
            tensor = _unpermute(name, tensor, config)
        tensors[name] = tensor if dtype is None or name == "rope_freqs" else tensor.to(dtype)
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


def _unpermute(name: str, w: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """llama.cpp's converter reorders q/k rows of each head for interleaved RoPE; restore HF's half-split order."""
    if name.endswith((".wq", ".bq")):
        heads = config.n_heads
    elif name.endswith((".wk", ".bk")):
        heads = config.n_kv_heads
    else:
        return w
    rest = w.shape[1:]
    # Forward was reshape(heads, 2, hd/2).swap(1, 2); the inverse splits (heads, hd/2, 2) and swaps back.
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *rest).transpose(1, 2).reshape(w.shape)
