"""A model read from disk: hyper-parameters, float tensors under canonical names, and its tokenizer.

Canonical names (what `Transformer.load_weights` expects): `embed`, `norm`, `output` (absent when tied),
`rope_freqs` (GGUF Llama-3 only) and per layer `layers.{i}.{attn_norm,ffn_norm,wq,wk,wv,wo,bq,bk,bv,w1,w2,w3}`
with w1 = gate, w3 = up, w2 = down.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kwasi_runtime.llm.config import ModelConfig
from kwasi_runtime.llm.tokenizer import TextTokenizer


@dataclass
class Checkpoint:
    config: ModelConfig
    tensors: dict[str, torch.Tensor]
    tokenizer: TextTokenizer


def is_llm_path(path: Path) -> bool:
    """A GGUF file, or a Hugging Face model directory (holding config.json): the paths this backend serves."""
    return path.suffix.lower() == ".gguf" or (path.is_dir() and (path / "config.json").is_file())


def load_checkpoint(path: Path, dtype: torch.dtype | None = None) -> Checkpoint:
    """Reads a .gguf file or an HF directory. FileNotFoundError if it is missing.

    `dtype` casts each tensor as soon as it is read, so peak host memory stays near the target size
    (a whole 8B model in fp32 would be 32 GB) rather than the fp32 size.
    """
    # Imported here so that `is_llm_path` stays cheap for the host's routing.
    if path.is_dir():
        from kwasi_runtime.llm.hf_loader import load_hf_directory

        return load_hf_directory(path, dtype)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    from kwasi_runtime.llm.gguf_loader import load_gguf

    return load_gguf(path, dtype)
