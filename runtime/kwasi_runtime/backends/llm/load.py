"""Reading a model from disk, whichever format it is in (the backend's routing only needs `is_llm_path`, which
stays cheap in `checkpoint`)."""

from __future__ import annotations

from pathlib import Path

import torch

from kwasi_runtime.backends.llm.checkpoint import Checkpoint
from kwasi_runtime.backends.llm.gguf_loader import load_gguf
from kwasi_runtime.backends.llm.hf_loader import load_hf_directory


def load_checkpoint(path: Path, dtype: torch.dtype | None = None) -> Checkpoint:
    """Reads a .gguf file or an HF directory. FileNotFoundError if it is missing.

    `dtype` casts each tensor as soon as it is read, so peak host memory stays near the target size
    (a whole 8B model in fp32 would be 32 GB) rather than the fp32 size.
    """
    if path.is_dir():
        return load_hf_directory(path, dtype)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return load_gguf(path, dtype)
