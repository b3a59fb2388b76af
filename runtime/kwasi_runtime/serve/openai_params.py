"""OpenAI request fields: which ones each route takes, their checks, and the sampling ones as WasmEdge metadata.

Every field is honoured or refused with a 400 that names it; a field no route knows is refused as OpenAI does
("Unrecognized request argument"). Fields that only describe the caller (`user`, `metadata`,
`safety_identifier`, `prompt_cache_key`) change nothing in a generation and are accepted; `user` is logged.
"""

from __future__ import annotations

import math
from typing import Any

MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20  # chat; OpenAI's limit
MAX_COMPLETION_LOGPROBS = 5  # legacy completions; OpenAI's limit
INT64 = (-(1 << 63), (1 << 63) - 1)
DESCRIPTIVE = frozenset({"user", "metadata", "safety_identifier", "prompt_cache_key"})
SAMPLING = frozenset({"temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                      "frequency_penalty", "seed", "logit_bias", "ignore_eos"})
GENERATION = SAMPLING | DESCRIPTIVE | {"model", "stream", "stream_options", "n", "max_tokens", "stop",
                                       "service_tier", "store"}
CHAT_FIELDS = GENERATION | {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools",
                            "tool_choice", "parallel_tool_calls", "response_format", "modalities"}
COMPLETION_FIELDS = GENERATION | {"prompt", "logprobs", "echo", "suffix", "best_of"}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code


def bad(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param)


def check_fields(doc: dict[str, Any], allowed: frozenset[str] | set[str]) -> None:
    for key in doc:
        if key not in allowed:
            raise OpenAIError(400, f"Unrecognized request argument supplied: {key}", param=key,
                              code="unsupported_parameter")


def typed(doc: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = doc.get(key)
    if value is None:
        return default
    # JSON true is a Python int; an integer field must not accept it.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {bool: "a boolean", int: "an integer", str: "a string", dict: "an object", list: "an array"}
        raise bad(key, f"'{key}' must be {names.get(kind, kind.__name__)}.")
    return value


def integer(doc: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value: int | None = typed(doc, key, int, None)
    if value is not None and not low <= value <= high:
        raise bad(key, f"'{key}' must be between {low} and {high}.")
    return value


def number(doc: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(key, f"'{key}' must be a number.")
    if not low <= value <= high:
        raise bad(key, f"'{key}' must be between {low:g} and {high:g}.")
    return float(value)


def sampling_metadata(doc: dict[str, Any]) -> dict[str, Any]:
    """The sampling fields as the backend's GGML metadata keys (llama.cpp's samplers behind them)."""
    meta: dict[str, Any] = {}
    for key, target, low, high in (("temperature", "temp", 0.0, 2.0), ("top_p", "top-p", 0.0, 1.0),
                                   ("min_p", "min-p", 0.0, 1.0), ("repetition_penalty", "repeat-penalty", 0.0,
                                                                  10.0)):
        value = number(doc, key, low, high)
        if value is not None:
            meta[target] = value
    if meta.get("repeat-penalty") == 0.0:
        raise bad("repetition_penalty", "'repetition_penalty' must be greater than 0.")
    for key, target in (("presence_penalty", "presence-penalty"), ("frequency_penalty", "frequency-penalty")):
        value = number(doc, key, -2.0, 2.0)
        if value is not None and value < 0:
            # llama.cpp's penalty samplers (and WasmEdge's GGML keys) clamp negatives to 0: refuse, not drop.
            raise bad(key, f"Negative '{key}' is not supported (the sampler only penalises).")
        if value is not None:
            meta[target] = value
    top_k = integer(doc, "top_k", -1, 1 << 31)
    if top_k is not None:
        meta["top-k"] = max(top_k, 0)  # vLLM's -1 and llama.cpp's 0 both mean off
    seed = integer(doc, "seed", *INT64)
    if seed is not None:
        meta["seed"] = seed & INT64[1]  # a negative seed is a seed too (the backend reads negatives as "random")
    if typed(doc, "ignore_eos", bool, None) is not None:
        meta["ignore-eos"] = doc["ignore_eos"]
    bias = typed(doc, "logit_bias", dict, None)
    if bias:
        meta["logit-bias"] = _logit_bias(bias)
    return meta


def _logit_bias(bias: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for token, value in bias.items():
        if not (token.isascii() and token.isdigit()) or len(token) > 10:
            raise bad("logit_bias", f"'logit_bias' keys must be token ids, got {token[:20]!r}.")
        if isinstance(value, bool) or not isinstance(value, int | float) or not -100 <= value <= 100:
            raise bad("logit_bias", "'logit_bias' values must be numbers between -100 and 100.")
        out[str(int(token))] = float(value)
    return out


def max_tokens(doc: dict[str, Any], context: int | None, chat: bool) -> int | None:
    key = "max_completion_tokens" if chat and doc.get("max_completion_tokens") is not None else "max_tokens"
    value = integer(doc, key, 1, INT64[1])
    if value is not None and context is not None and value > context:
        raise OpenAIError(400, f"'{key}' is too large: {value}. This model's maximum context length is "
                               f"{context} tokens.", param=key, code="context_length_exceeded")
    return value


def stops(value: Any) -> list[str]:
    if value is None:
        return []
    found = [value] if isinstance(value, str) else value
    if not isinstance(found, list) or not all(isinstance(s, str) for s in found):
        raise bad("stop", "'stop' must be a string or an array of strings.")
    if len(found) > MAX_STOP_SEQUENCES:
        raise bad("stop", f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences.")
    for s in found:
        utf8(s, "stop")
        if "\0" in s:
            raise bad("stop", "'stop' sequences cannot contain NUL.")
    return [s for s in found if s]


def common(doc: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage) after the checks every generation route shares."""
    stream = typed(doc, "stream", bool, False)
    options = typed(doc, "stream_options", dict, None)
    if options is not None:
        check_fields(options, {"include_usage"})
    include_usage = bool(stream and options and typed(options, "include_usage", bool, False))
    if integer(doc, "n", 1, 1 << 31) not in (None, 1):
        raise bad("n", "Only n=1 is supported.")
    if typed(doc, "store", bool, False):
        raise bad("store", "'store' is not supported: this server keeps no completions.")
    if typed(doc, "service_tier", str, "auto") not in ("auto", "default"):
        raise bad("service_tier", "'service_tier' must be 'auto' or 'default' here.")
    for key in ("user", "safety_identifier", "prompt_cache_key"):
        typed(doc, key, str, None)
    typed(doc, "metadata", dict, None)
    return stream, include_usage


def utf8(text: str, param: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped in the JSON
        raise bad(param, f"'{param}' is not valid Unicode.") from None
