"""Tokenizer pieces (raw bytes per token), GGUF-rebuilt tokenizer, chat-template rendering."""

from __future__ import annotations

import pytest

from kwasi_runtime.backends.llm.chat import ChatTemplateError, parse_messages, render_chat
from kwasi_runtime.backends.llm.generation import LoadedModel, Utf8Assembler
from kwasi_runtime.backends.llm.tokenizer import from_gguf


def test_smollm2_pieces_are_raw_bytes_that_concatenate_to_the_text(smollm2: LoadedModel) -> None:
    tok = smollm2.tokenizer
    text = "Crabs 🦀 say wörld 中文字"
    ids = tok.encode(text)
    pieces = [tok.piece(i) for i in ids]
    assert b"".join(pieces) == text.encode()
    assert any(not _valid(p) for p in pieces)  # some token carries only part of a character
    assembler = Utf8Assembler()
    deltas = [assembler.feed(p) for p in pieces]
    assert "".join(deltas) == text and all("\ufffd" not in d for d in deltas)


def test_smollm2_tokenizer_matches_its_own_special_tokens(smollm2: LoadedModel) -> None:
    tok = smollm2.tokenizer
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tok.tokenizer.token_to_id("<|im_start|>") and ids[-1] == 2
    assert 2 in tok.eog_ids  # <|im_end|> is the file's eos
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>"


def test_spm_vocabulary_from_gguf_fields() -> None:
    # A SentencePiece-style ("llama") vocabulary: merges come from scores; bytes fall back to <0xNN>.
    tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], "\u2581", "h", "i", "\u2581h",
              "\u2581hi"]
    types = [2, 3, 3, *[6] * 256, 1, 1, 1, 1, 1]
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -0.5, -0.1]
    tok = from_gguf({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
                     "tokenizer.ggml.token_type": types, "tokenizer.ggml.scores": scores,
                     "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2})
    ids = tok.encode("hi é")
    assert ids[:2] == [1, tokens.index("\u2581hi")]  # BOS added (llama default), then the merged word
    assert tok.piece(tokens.index("\u2581hi")) == b" hi"
    assert b"".join(tok.piece(i) for i in ids[1:]) == " hi é".encode()
    assert tok.eog_ids == {2}


def test_render_chat_with_model_template(smollm2: LoadedModel) -> None:
    tok = smollm2.tokenizer
    text = render_chat(tok.chat_template, [{"role": "user", "content": "Hi"}], tok.bos_token, tok.eos_token)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert "You are a helpful AI assistant named SmolLM" in text  # the template's default system prompt


def test_chat_messages_are_validated() -> None:
    assert parse_messages('[{"role": "user", "content": "x"}]') == [{"role": "user", "content": "x"}]
    for bad in ('{"role": "user"}', "[1]", "[{}]", "nope"):
        with pytest.raises(ChatTemplateError):
            parse_messages(bad)
    with pytest.raises(ChatTemplateError, match="roles"):
        render_chat("{{ raise_exception('roles must alternate') }}", [])


def _valid(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
