"""Constrained decoding: the next token must keep the output inside a grammar (llguidance's token masks).

Grammars come from WasmEdge's GGML metadata keys `grammar` (llama.cpp GBNF) and `json-schema` (a JSON schema as a
string), or from the tool-call format (`tool_calls.py`, as Lark with embedded JSON schemas). llguidance computes
the allowed-token bitmask over the model's vocabulary from its tokenizer JSON, incrementally per token, which
keeps the per-token cost small (bench/constrained.py measures it against unconstrained decoding).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import llguidance
import numpy as np
import torch
from llguidance.gbnf_to_lark import gbnf_to_lark

from kwasi_runtime.backends.llm.tokenizer import TextTokenizer
from kwasi_runtime.nn.abi import Errno, NNError

# One fixed layout (the spacing models write most): no free whitespace runs for a small model to loop in.
JSON_STYLE: Any = {"item_separator": ", ", "key_separator": ": ",
                                             "whitespace_flexible": False, "coerce_one_of": True}
_tokenizers: dict[int, tuple[TextTokenizer, llguidance.LLTokenizer]] = {}
_lock = threading.Lock()


def ll_tokenizer(tok: TextTokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of the vocabulary (about a second to build for 50k tokens), once per tokenizer."""
    with _lock:
        hit = _tokenizers.get(id(tok))
        if hit is not None and hit[0] is tok:
            return hit[1]
    built = llguidance.LLTokenizer(tok.tokenizer.to_str(), n_vocab=tok.vocab_size,
                                   eos_token=sorted(tok.eog_ids) or None)
    with _lock:
        _tokenizers[id(tok)] = (tok, built)  # the tokenizer lives as long as its model; models are few
    return built


def grammar_from_gbnf(gbnf: str) -> str:
    try:
        return str(llguidance.LLMatcher.grammar_from_lark(gbnf_to_lark(gbnf)))
    except Exception as exc:  # the converter raises its own error types for bad GBNF
        raise NNError(Errno.INVALID_ARGUMENT, f"grammar: {exc}") from None


def grammar_from_json_schema(schema: str | dict[str, Any]) -> str:
    try:
        doc = json.loads(schema) if isinstance(schema, str) else schema
    except ValueError as exc:
        raise NNError(Errno.INVALID_ARGUMENT, f"json-schema is not JSON: {exc}") from None
    if doc is True:
        doc = {}
    if not isinstance(doc, dict):
        raise NNError(Errno.INVALID_ARGUMENT, "json-schema must hold a JSON schema object")
    try:
        return str(llguidance.LLMatcher.grammar_from_json_schema(
            doc, defaults=JSON_STYLE))
    except Exception as exc:
        raise NNError(Errno.INVALID_ARGUMENT, f"json-schema: {exc}") from None


def json_schema_error(schema: dict[str, Any]) -> str:
    """Why this JSON schema cannot be enforced ('' when it can). No tokenizer needed, so the API layer can refuse
    a bad schema with llguidance's own words before a guest runs."""
    try:
        return str(llguidance.LLMatcher.validate_grammar(grammar_from_json_schema(schema), None))
    except NNError as exc:
        return str(exc)


def grammar_from_lark(lark: str) -> str:
    return str(llguidance.LLMatcher.grammar_from_lark(lark))


class Constraint:
    """One generation's matcher: masks the scores before sampling, then follows the sampled token."""

    def __init__(self, tok: TextTokenizer, grammar: str) -> None:
        self.tokenizer = tok
        self.grammar = grammar
        lltok = ll_tokenizer(tok)
        error = llguidance.LLMatcher.validate_grammar(grammar, lltok)
        if error:
            raise NNError(Errno.INVALID_ARGUMENT, f"grammar rejected: {error}")
        self._matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
        if self._matcher.is_error():
            raise NNError(Errno.INVALID_ARGUMENT, f"grammar rejected: {self._matcher.get_error()}")
        self._eog = sorted(tok.eog_ids)

    def reset(self) -> None:
        self._matcher.reset()

    def allowed(self, vocab: int) -> torch.Tensor:
        """Bool `[vocab]`: tokens that keep the output inside the grammar (end of generation once complete)."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        mask = np.unpackbits(bits, bitorder="little")[:vocab].astype(bool)
        if mask.shape[0] < vocab:  # the model's output rows past the tokenizer's vocabulary
            mask = np.concatenate([mask, np.zeros(vocab - mask.shape[0], dtype=bool)])
        if not mask.any():  # finished or failed: the only way on is to end the generation
            mask[[t for t in self._eog if t < vocab]] = True
        return torch.from_numpy(mask)

    def mask(self, scores: torch.Tensor) -> None:
        scores.masked_fill_(~self.allowed(scores.shape[-1]), float("-inf"))

    def accept(self, token: int) -> None:
        if token in self.tokenizer.eog_ids and self._matcher.is_accepting():
            return
        self._matcher.consume_token(token)

    @property
    def done(self) -> bool:
        return bool(self._matcher.is_stopped())
