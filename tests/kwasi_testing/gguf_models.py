"""Tiny models for the LLM backend tests: a byte-level tokenizer, random HF checkpoints, GGUF writers,
and a *scripted* model whose greedy output is a chosen byte string (for exact streaming/stop tests)."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOT_ID, IM_START_ID, IM_END_ID = 256, 257, 258
VOCAB = 256 + len(SPECIALS)
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_alphabet() -> list[str]:
    """Token text of byte b (GPT-2 byte-level alphabet), index = byte value."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    printable = [b for b in range(256) if chr(b) in alphabet]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def byte_tokens() -> list[str]:
    return [*byte_alphabet(), *SPECIALS]


def byte_tokenizer() -> Tokenizer:
    """Every byte is one token (no merges), so any text round-trips and multi-byte characters span tokens."""
    vocab = {t: i for i, t in enumerate(byte_tokens())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return tok


# ---- HF checkpoints -----------------------------------------------------------------------------------

def hf_config(arch: str) -> Any:
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common: dict[str, Any] = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  max_position_embeddings=256, bos_token_id=IM_START_ID, eos_token_id=IM_END_ID)
    if arch == "llama3":
        return LlamaConfig(**common, num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5,
                           tie_word_embeddings=True,
                           rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 16})
    if arch == "qwen2":
        return Qwen2Config(**common, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                           tie_word_embeddings=True,
                           rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    if arch == "mistral":
        return MistralConfig(**common, num_attention_heads=4, num_key_value_heads=1, rms_norm_eps=1e-5,
                             tie_word_embeddings=False, sliding_window=8,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    raise ValueError(arch)


def save_hf_model(arch: str, directory: Path, seed: int = 0) -> Any:
    """A random fp32 model saved as an HF directory (config, safetensors, tokenizer files); returns it."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
        hf_config(arch), dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        # Norm weights start at 1 and biases at 0, which would hide mistakes in applying them.
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    model.save_pretrained(directory)
    (directory / "tokenizer.json").write_text(byte_tokenizer().to_str(), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHATML,
    }), encoding="utf-8")
    return model


# ---- GGUF ------------------------------------------------------------------------------------------------

_HF_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows for interleaved RoPE (the loader must undo it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors_from_hf(state: Mapping[str, torch.Tensor], cfg: Any, arch: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, t in state.items():
        a = t.detach().float().numpy()
        if name == "model.embed_tokens.weight":
            out["token_embd.weight"] = a
        elif name == "model.norm.weight":
            out["output_norm.weight"] = a
        elif name == "lm_head.weight":
            if not cfg.tie_word_embeddings:
                out["output.weight"] = a
        elif name.startswith("model.layers."):
            idx, _, rest = name[len("model.layers."):].partition(".")
            if arch == "llama" and rest.startswith("self_attn.q_proj"):
                a = llama_cpp_permute(a, cfg.num_attention_heads)
            elif arch == "llama" and rest.startswith("self_attn.k_proj"):
                a = llama_cpp_permute(a, cfg.num_key_value_heads)
            out[f"blk.{idx}.{_HF_TO_GGUF[rest]}"] = a
    return out


def write_gguf(path: Path, arch: str, hp: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
               qtypes: Mapping[str, gguf.GGMLQuantizationType] | None = None,
               chat_template: str | None = CHATML) -> None:
    """A GGUF with the byte-level tokenizer; `qtypes` picks a quantization per tensor (default F32)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("kwasi-test")
    w.add_context_length(hp["context_length"])
    w.add_embedding_length(hp["dim"])
    w.add_block_count(hp["n_layers"])
    w.add_feed_forward_length(hp["ffn_dim"])
    w.add_head_count(hp["n_heads"])
    w.add_head_count_kv(hp["n_kv_heads"])
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_rope_freq_base(hp["rope_theta"])
    w.add_rope_dimension_count(hp["dim"] // hp["n_heads"])
    w.add_vocab_size(VOCAB)
    if hp.get("sliding_window"):
        w.add_sliding_window(hp["sliding_window"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(byte_tokens())
    w.add_token_merges([])
    w.add_token_types([gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * len(SPECIALS))
    w.add_bos_token_id(IM_START_ID)
    w.add_eos_token_id(IM_END_ID)
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)
    for name, arr in tensors.items():
        qtype = (qtypes or {}).get(name, gguf.GGMLQuantizationType.F32)
        a = np.ascontiguousarray(arr, dtype=np.float32)
        if qtype == gguf.GGMLQuantizationType.F32 or a.ndim == 1:
            w.add_tensor(name, a)
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def hf_hparams(cfg: Any) -> dict[str, Any]:
    rope = getattr(cfg, "rope_parameters", None) or {}
    return {
        "context_length": cfg.max_position_embeddings, "dim": cfg.hidden_size,
        "n_layers": cfg.num_hidden_layers, "ffn_dim": cfg.intermediate_size,
        "n_heads": cfg.num_attention_heads, "n_kv_heads": cfg.num_key_value_heads, "eps": cfg.rms_norm_eps,
        "rope_theta": rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)),
        "sliding_window": getattr(cfg, "sliding_window", None) if cfg.model_type == "mistral" else None,
    }


# ---- scripted model ---------------------------------------------------------------------------------------

def write_scripted_gguf(path: Path, successor: Mapping[int, int], default_next: int = IM_END_ID,
                        n_layers: int = 1) -> None:
    """A model whose greedy next token depends only on the current one: `successor[t]` (else default_next).

    Embeddings are one-hot and every block writes zero to the residual stream, so the final hidden state of
    token t is a scaled one-hot and the LM head row chosen by `successor` wins by a wide margin.
    """
    dim = VOCAB + (-VOCAB % 8)  # a multiple of the head count
    embed = np.zeros((VOCAB, dim), dtype=np.float32)
    embed[np.arange(VOCAB), np.arange(VOCAB)] = 1.0
    head = np.zeros((VOCAB, dim), dtype=np.float32)
    for t in range(VOCAB):
        head[successor.get(t, default_next), t] = 1.0
    n_heads, ffn = 4, 32
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {"token_embd.weight": embed, "output.weight": head,
                                      "output_norm.weight": np.ones(dim, dtype=np.float32)}
    for i in range(n_layers):
        tensors |= {
            f"blk.{i}.attn_norm.weight": np.ones(dim, dtype=np.float32),
            f"blk.{i}.ffn_norm.weight": np.ones(dim, dtype=np.float32),
            f"blk.{i}.attn_q.weight": rng.standard_normal((dim, dim), dtype=np.float32) * 0.02,
            f"blk.{i}.attn_k.weight": rng.standard_normal((dim, dim), dtype=np.float32) * 0.02,
            f"blk.{i}.attn_v.weight": rng.standard_normal((dim, dim), dtype=np.float32) * 0.02,
            f"blk.{i}.attn_output.weight": np.zeros((dim, dim), dtype=np.float32),
            f"blk.{i}.ffn_gate.weight": rng.standard_normal((ffn, dim), dtype=np.float32) * 0.02,
            f"blk.{i}.ffn_up.weight": rng.standard_normal((ffn, dim), dtype=np.float32) * 0.02,
            f"blk.{i}.ffn_down.weight": np.zeros((dim, ffn), dtype=np.float32),
        }
    hp = {"context_length": 512, "dim": dim, "n_layers": n_layers, "ffn_dim": ffn, "n_heads": n_heads,
          "n_kv_heads": n_heads, "eps": 1e-6, "rope_theta": 10000.0}
    write_gguf(path, "llama", hp, tensors)


def chain(start: int, script: bytes, end: int = IM_END_ID) -> dict[int, int]:
    """successor map: start -> script[0] -> ... -> script[-1] -> end. Script bytes must be distinct."""
    if len(set(script)) != len(script):
        raise ValueError("script bytes must be distinct to form a chain")
    order = [start, *script, end]
    return dict(itertools.pairwise(order))


def random_llama_gguf(path: Path, seed: int = 0, context_length: int = 256, chat_template: str | None = CHATML) -> None:
    """A small random-weight llama GGUF (for sampling tests, where logits should be spread out)."""
    rng = np.random.default_rng(seed)
    dim, ffn, heads, kv, layers = 64, 128, 4, 2, 2
    hd = dim // heads

    def r(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) / math.sqrt(shape[-1])

    tensors = {"token_embd.weight": r(VOCAB, dim), "output_norm.weight": np.ones(dim, dtype=np.float32)}
    for i in range(layers):
        tensors |= {
            f"blk.{i}.attn_norm.weight": np.ones(dim, dtype=np.float32),
            f"blk.{i}.ffn_norm.weight": np.ones(dim, dtype=np.float32),
            f"blk.{i}.attn_q.weight": r(heads * hd, dim), f"blk.{i}.attn_k.weight": r(kv * hd, dim),
            f"blk.{i}.attn_v.weight": r(kv * hd, dim), f"blk.{i}.attn_output.weight": r(dim, heads * hd),
            f"blk.{i}.ffn_gate.weight": r(ffn, dim), f"blk.{i}.ffn_up.weight": r(ffn, dim),
            f"blk.{i}.ffn_down.weight": r(dim, ffn),
        }
    hp = {"context_length": context_length, "dim": dim, "n_layers": layers, "ffn_dim": ffn, "n_heads": heads,
          "n_kv_heads": kv, "eps": 1e-5, "rope_theta": 10000.0}
    write_gguf(path, "llama", hp, tensors, chat_template=chat_template)


def random_llama_file(factory: Any, seed: int, context_length: int = 256, chat_template: str | None = CHATML) -> Path:
    """`random_llama_gguf` in a fresh temporary folder of a pytest `tmp_path_factory`."""
    path: Path = factory.mktemp("tiny") / "random.gguf"
    random_llama_gguf(path, seed=seed, context_length=context_length, chat_template=chat_template)
    return path
