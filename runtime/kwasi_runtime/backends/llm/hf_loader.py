"""Hugging Face model directories: config.json, (sharded) *.safetensors, tokenizer files, generation_config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from kwasi_runtime.backends.llm.checkpoint import Checkpoint
from kwasi_runtime.backends.llm.config import ModelConfig
from kwasi_runtime.backends.llm.quantize import Weight
from kwasi_runtime.backends.llm.tokenizer import from_hf_files

_GLOBAL_NAMES = {"model.embed_tokens.weight": "embed", "model.norm.weight": "norm", "lm_head.weight": "output"}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm",
    "post_attention_layernorm.weight": "ffn_norm",
    "self_attn.q_proj.weight": "wq",
    "self_attn.k_proj.weight": "wk",
    "self_attn.v_proj.weight": "wv",
    "self_attn.q_proj.bias": "bq",
    "self_attn.k_proj.bias": "bk",
    "self_attn.v_proj.bias": "bv",
    "self_attn.o_proj.weight": "wo",
    "mlp.gate_proj.weight": "w1",
    "mlp.up_proj.weight": "w3",
    "mlp.down_proj.weight": "w2",
}


def canonical_name(hf_name: str) -> str | None:
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    if hf_name.startswith("model.layers."):
        index, _, rest = hf_name[len("model.layers."):].partition(".")
        if rest in _LAYER_NAMES:
            return f"layers.{index}.{_LAYER_NAMES[rest]}"
    return None  # e.g. rotary_emb.inv_freq in old checkpoints: recomputed, not loaded


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        return [directory / s for s in shards]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {directory}")
    return files


def _eos_ids(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, list) else {int(value)}


def load_hf_directory(directory: Path, dtype: torch.dtype | None = None) -> Checkpoint:
    cfg = _read_json(directory / "config.json")
    if not cfg:
        raise FileNotFoundError(f"no config.json in {directory}")
    config = ModelConfig.from_hf(cfg)
    tensors: dict[str, Weight] = {}
    for file in _weight_files(directory):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                canonical = canonical_name(name)
                if canonical is not None:
                    tensor = f.get_tensor(name)
                    tensors[canonical] = tensor if dtype is None else tensor.to(dtype)

    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {directory}")
    template_file = directory / "chat_template.jinja"
    # Stop tokens: the union of generation_config.json's (often a list) and config.json's eos ids.
    eos = _eos_ids(_read_json(directory / "generation_config.json").get("eos_token_id")) | _eos_ids(
        cfg.get("eos_token_id"))
    tokenizer = from_hf_files(
        tokenizer_file.read_text(encoding="utf-8"),
        _read_json(directory / "tokenizer_config.json"),
        template_file.read_text(encoding="utf-8") if template_file.is_file() else None,
        eos,
    )
    return Checkpoint(config=config, tensors=tensors, tokenizer=tokenizer)
