"""A model read from disk: hyper-parameters, weights under canonical names, and its tokenizer.

Weights are float tensors, or GGML block-quantized matrices kept as integers (`quantize.BlockQuant`).

Canonical names (what `Transformer.load_weights` expects): `embed`, `norm`, `output` (absent when tied),
`rope_freqs` (GGUF Llama-3 only) and per layer `layers.{i}.{attn_norm,ffn_norm,wq,wk,wv,wo,bq,bk,bv,w1,w2,w3}`
with w1 = gate, w3 = up, w2 = down.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kwasi_runtime.backends.llm.config import ModelConfig
from kwasi_runtime.backends.llm.quantize import Weight
from kwasi_runtime.backends.llm.tokenizer import TextTokenizer


@dataclass
class Checkpoint:
    config: ModelConfig
    tensors: dict[str, Weight]
    tokenizer: TextTokenizer


def is_llm_path(path: Path) -> bool:
    """A GGUF file, or a Hugging Face model directory (holding config.json): the paths this backend serves."""
    return path.suffix.lower() == ".gguf" or (path.is_dir() and (path / "config.json").is_file())
