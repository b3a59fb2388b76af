"""Tokenizers for the LLM backend, built with the `tokenizers` library from a GGUF vocabulary or tokenizer.json.

Besides encode/decode, every token has a raw byte *piece*: what llama.cpp's `token_to_piece` returns and
WasmEdge's `get_output_single` hands to the guest. A piece may be part of a multi-byte UTF-8 character.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

# Token texts llama.cpp treats as end-of-generation even when the file names only one EOS id.
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>",
    "<|end_of_text|>",
})

# GGUF `tokenizer.ggml.token_type` values.
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizer regexes llama.cpp selects by `tokenizer.ggml.pre` (public facts of the Llama-3 and Qwen2 vocabularies).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_SPM_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPM_SPACE = "\u2581"


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet reversed: printable stand-in character -> original byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


@dataclass
class TextTokenizer:
    tokenizer: Tokenizer
    byte_level: bool  # GPT-2 style byte-level BPE (else SentencePiece style with <0xNN> byte tokens)
    bos_id: int | None
    add_bos: bool  # prepend bos_id ourselves (HF tokenizer.json files do it in their post-processor)
    eog_ids: frozenset[int]
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    _pieces: list[bytes] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._pieces = self._build_pieces()

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids; special tokens written in the text are recognised (llama.cpp's parse_special=true)."""
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=add_special).ids
        if add_special and self.add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.piece(i) for i in ids).decode("utf-8", errors="replace")

    def piece(self, token: int) -> bytes:
        return self._pieces[token] if 0 <= token < len(self._pieces) else b""

    def _build_pieces(self) -> list[bytes]:
        added = {i: t.content for i, t in self.tokenizer.get_added_tokens_decoder().items()}
        byte_decoder = _byte_decoder()
        pieces: list[bytes] = []
        for i in range(self.tokenizer.get_vocab_size(with_added_tokens=True)):
            text = added.get(i) or self.tokenizer.id_to_token(i) or ""
            if i in added:
                pieces.append(text.encode())
            elif self.byte_level:
                if all(c in byte_decoder for c in text):
                    pieces.append(bytes(byte_decoder[c] for c in text))
                else:
                    pieces.append(text.encode())
            else:
                m = _SPM_BYTE.fullmatch(text)
                pieces.append(bytes([int(m.group(1), 16)]) if m else text.replace(_SPM_SPACE, " ").encode())
        return pieces


def eog_from_texts(tokenizer: Tokenizer, ids: set[int]) -> frozenset[int]:
    for text in EOG_TEXTS:
        tid = tokenizer.token_to_id(text)
        if tid is not None:
            ids.add(tid)
    return frozenset(ids)


def from_gguf(meta: Mapping[str, Any]) -> TextTokenizer:
    """Rebuilds the tokenizer from `tokenizer.ggml.*` metadata (types `gpt2` and `llama`)."""
    kind = meta.get("tokenizer.ggml.model")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if kind == "gpt2":
        tok = _gpt2_tokenizer(tokens, list(meta.get("tokenizer.ggml.merges") or []),
                              str(meta.get("tokenizer.ggml.pre", "default")))
        default_bos = meta.get("tokenizer.ggml.pre") in ("llama-bpe", "llama3")
    elif kind == "llama":
        tok = _spm_tokenizer(tokens, list(meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)), types,
                             bool(meta.get("tokenizer.ggml.add_space_prefix", True)))
        default_bos = True
    else:
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported (gpt2 and llama are)")
    specials = [AddedToken(t, special=ty == _CONTROL, normalized=False)
                for t, ty in zip(tokens, types, strict=False) if ty in (_CONTROL, _USER_DEFINED)]
    tok.add_special_tokens([s for s in specials if s.special])
    tok.add_tokens([s for s in specials if not s.special])

    bos = meta.get("tokenizer.ggml.bos_token_id")
    eog = {int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                  "tokenizer.ggml.eom_token_id") if meta.get(k) is not None}
    eos = meta.get("tokenizer.ggml.eos_token_id")
    return TextTokenizer(
        tokenizer=tok,
        byte_level=kind == "gpt2",
        bos_id=int(bos) if bos is not None else None,
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", default_bos)),
        eog_ids=eog_from_texts(tok, eog),
        chat_template=meta.get("tokenizer.chat_template"),
        bos_token=tokens[int(bos)] if bos is not None else "",
        eos_token=tokens[int(eos)] if eos is not None else "",
    )


def _gpt2_tokenizer(tokens: list[str], merges: list[str], pre: str) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    # Llama-3 style vocabularies look whole words up before merging (llama.cpp's ignore_merges).
    ignore_merges = pre in ("llama-bpe", "llama3")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))  # type: ignore[arg-type]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in ("llama-bpe", "llama3"):
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"), byte_level])
    elif pre == "qwen2":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"), byte_level])
    elif pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _spm_tokenizer(tokens: list[str], scores: list[float], types: list[int], space_prefix: bool) -> Tokenizer:
    # SentencePiece-BPE vocabularies ship scores, not merges: a pair merges if both halves and the
    # concatenation are tokens, ranked by the concatenation's score (how transformers rebuilds them too).
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked: list[tuple[float, int, str, str]] = []
    for merged, idx in vocab.items():
        if types[idx] != 1 or len(merged) < 2:
            continue
        for k in range(1, len(merged)):
            left, right = merged[:k], merged[k:]
            if left in vocab and right in vocab:
                ranked.append((-scores[idx], idx, left, right))
    ranked.sort()
    unk = next((t for t, ty in zip(tokens, types, strict=False) if ty == 2), None)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, _, a, b in ranked],
                               unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=_SPM_SPACE, prepend_scheme="first" if space_prefix else "never", split=False)
    tok.decoder = decoders.Sequence([
        decoders.Replace(_SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return tok


def from_hf_files(tokenizer_json: str, tokenizer_config: Mapping[str, Any], chat_template: str | None,
                  eos_ids: set[int]) -> TextTokenizer:
    """tokenizer.json (+ tokenizer_config.json fields); BOS comes from the file's own post-processor."""
    tok = Tokenizer.from_str(tokenizer_json)
    spec = json.loads(tokenizer_json)
    byte_level = "ByteLevel" in json.dumps(spec.get("decoder"))
    bos_token = _token_text(tokenizer_config.get("bos_token"))
    eos_token = _token_text(tokenizer_config.get("eos_token"))
    eos_id = tok.token_to_id(eos_token) if eos_token else None
    if eos_id is not None:
        eos_ids.add(eos_id)
    bos_id = tok.token_to_id(bos_token) if bos_token else None
    template = chat_template or _config_template(tokenizer_config.get("chat_template"))
    return TextTokenizer(
        tokenizer=tok, byte_level=byte_level, bos_id=bos_id, add_bos=False, eog_ids=eog_from_texts(tok, eos_ids),
        chat_template=template, bos_token=bos_token, eos_token=eos_token,
    )


def _token_text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value) if value else ""


def _config_template(value: Any) -> str | None:
    if isinstance(value, list):  # [{name, template}, ...]: the "default" one serves chat
        named = {str(t.get("name")): str(t.get("template")) for t in value if isinstance(t, dict)}
        return named.get("default") or next(iter(named.values()), None)
    return str(value) if value else None
