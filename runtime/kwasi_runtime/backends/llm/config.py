"""Model hyper-parameters, read from a Hugging Face `config.json` or from GGUF metadata.

One dataclass covers every supported family (Llama 2/3/3.x, Mistral, Qwen2/2.5, SmolLM2): they share the
Llama block shape and differ only in flags (qkv bias, tied embeddings, sliding window, RoPE scaling).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# HF `model_type` / `architectures` values and GGUF `general.architecture` values we implement.
HF_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
GGUF_ARCHITECTURES = {"llama", "qwen2"}


class UnsupportedModelError(ValueError):
    """The model is well-formed but uses an architecture or feature this backend does not implement."""


@dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama-3.1+ frequency-dependent RoPE scaling (`rope_type: llama3`)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class ModelConfig:
    family: str  # "llama" | "mistral" | "qwen2"; informational, behaviour comes from the flags below
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    norm_eps: float
    rope_theta: float
    max_seq_len: int
    qkv_bias: bool = False
    tie_embeddings: bool = False
    sliding_window: int | None = None
    rope_scaling: Llama3RopeScaling | None = None

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> ModelConfig:
        family = _hf_family(cfg)
        if cfg.get("quantization_config"):
            method = cfg["quantization_config"].get("quant_method", "?")
            raise UnsupportedModelError(f"quantized HF checkpoints ({method}) are not supported; use GGUF")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedModelError(f"hidden_act {act!r} is not supported (only silu)")
        n_heads = int(cfg["num_attention_heads"])
        dim = int(cfg["hidden_size"])
        rope_theta, scaling = _hf_rope(cfg)
        return cls(
            family=family,
            vocab_size=int(cfg["vocab_size"]),
            dim=dim,
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            head_dim=int(cfg.get("head_dim") or dim // n_heads),
            ffn_dim=int(cfg["intermediate_size"]),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            max_seq_len=int(cfg.get("max_position_embeddings", 4096)),
            # Qwen2 hard-codes q/k/v biases in its attention module; Llama exposes a flag.
            qkv_bias=family == "qwen2" or bool(cfg.get("attention_bias", False)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            sliding_window=_hf_sliding_window(family, cfg),
            rope_scaling=scaling,
        )

    @classmethod
    def from_gguf(cls, meta: Mapping[str, Any], has_output: bool, has_qkv_bias: bool) -> ModelConfig:
        """`meta` maps GGUF keys to Python values; the flags come from which tensors the file holds."""
        arch = str(meta.get("general.architecture", "?"))
        if arch not in GGUF_ARCHITECTURES:
            raise UnsupportedModelError(
                f"GGUF architecture {arch!r} is not supported (supported: {', '.join(sorted(GGUF_ARCHITECTURES))})"
            )

        def key(name: str, default: Any = None) -> Any:
            value = meta.get(f"{arch}.{name}", default)
            if value is None:
                raise ValueError(f"GGUF metadata lacks {arch}.{name}")
            return value

        dim = int(key("embedding_length"))
        n_heads = int(key("attention.head_count"))
        n_kv = key("attention.head_count_kv", n_heads)
        vocab = meta.get(f"{arch}.vocab_size")
        if vocab is None:
            vocab = len(meta["tokenizer.ggml.tokens"])
        window = meta.get(f"{arch}.attention.sliding_window")
        scaling_type = meta.get(f"{arch}.rope.scaling.type", "none")
        if scaling_type not in ("none", "linear") or (
            scaling_type == "linear" and float(meta.get(f"{arch}.rope.scaling.factor", 1.0)) != 1.0
        ):
            # Llama-3 scaling is stored as the rope_freqs tensor, which the loader applies; other kinds are not.
            raise UnsupportedModelError(f"GGUF RoPE scaling type {scaling_type!r} is not supported")
        return cls(
            family=arch,
            vocab_size=int(vocab),
            dim=dim,
            n_layers=int(key("block_count")),
            n_heads=n_heads,
            n_kv_heads=int(n_kv),
            head_dim=int(meta.get(f"{arch}.attention.key_length") or meta.get(f"{arch}.rope.dimension_count")
                         or dim // n_heads),
            ffn_dim=int(key("feed_forward_length")),
            norm_eps=float(key("attention.layer_norm_rms_epsilon")),
            rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
            max_seq_len=int(key("context_length")),
            qkv_bias=has_qkv_bias,
            tie_embeddings=not has_output,
            sliding_window=int(window) if window else None,
        )


def _hf_family(cfg: Mapping[str, Any]) -> str:
    model_type = cfg.get("model_type")
    if model_type in HF_MODEL_TYPES:
        return HF_MODEL_TYPES[model_type]
    for arch in cfg.get("architectures") or []:
        if arch in HF_ARCHITECTURES:
            return HF_ARCHITECTURES[arch]
    named = model_type or ", ".join(cfg.get("architectures") or []) or "unknown"
    raise UnsupportedModelError(
        f"model architecture {named!r} is not supported (supported: Llama, Mistral, Qwen2, SmolLM2)"
    )


def _hf_rope(cfg: Mapping[str, Any]) -> tuple[float, Llama3RopeScaling | None]:
    # Three spellings exist: legacy `rope_scaling.type`, v4 `rope_scaling.rope_type`, and transformers v5
    # `rope_parameters` (which also carries rope_theta).
    params: Mapping[str, Any] = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = float(params.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind == "default":
        return theta, None
    if kind == "llama3":
        return theta, Llama3RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    raise UnsupportedModelError(f"RoPE scaling type {kind!r} is not supported (default and llama3 are)")


def _hf_sliding_window(family: str, cfg: Mapping[str, Any]) -> int | None:
    window = cfg.get("sliding_window")
    if not window:
        return None
    if family == "mistral":
        return int(window)
    if family == "qwen2" and cfg.get("use_sliding_window"):
        # Qwen2 applies the window only to layers >= max_window_layers; mixing per-layer windows is not
        # implemented, and released Qwen2.5 checkpoints all have it off.
        layer_types = cfg.get("layer_types")
        if layer_types and all(t == "sliding_attention" for t in layer_types):
            return int(window)
        raise UnsupportedModelError("Qwen2 per-layer sliding window (use_sliding_window) is not supported")
    return None
