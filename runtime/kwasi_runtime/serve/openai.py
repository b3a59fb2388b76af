"""The OpenAI-compatible routes' host side: validate the request, hand the chat guest a flat plan.

The guest does the WASI-NN work and writes the whole HTTP response (SSE or JSON), so everything a client
waits for runs through the sandbox. The host keeps to what C would need a JSON parser for: it checks the
request, turns `messages` into the backend's chat prompt (a JSON list) and sampling fields into WasmEdge
metadata JSON, and passes the rest as environment variables:

    stdin                the prompt: JSON list of {role, content} (chat) or the text (completions)
    KWASI_MODEL          WASI-NN model name for load_by_name
    KWASI_NN_METADATA    JSON for set_input(1) before the prompt: chat, temp, top-p, seed, complete-utf8
    KWASI_OPENAI_KIND    chat | text (chat.completion vs text_completion objects)
    KWASI_OPENAI_ID, KWASI_OPENAI_CREATED, KWASI_OPENAI_MODEL_JSON  pasted into every object
    KWASI_STREAM, KWASI_INCLUDE_USAGE   0 | 1
    KWASI_MAX_TOKENS     generated-token limit (0: none)
    KWASI_STOP_COUNT, KWASI_STOP_0..3   stop sequences, raw bytes
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_STOP_SEQUENCES = 4
ROLES = {"system", "developer", "user", "assistant", "tool"}


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

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}}).encode()


@dataclass(frozen=True)
class GuestPlan:
    model: str
    stdin: bytes
    env: list[tuple[str, str]]
    stream: bool


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OpenAIError(400, f"We could not parse the JSON body of your request: {e}") from None
    if not isinstance(doc, dict):
        raise OpenAIError(400, "The request body must be a JSON object.")
    return doc


def chat_plan(body: bytes, models: Sequence[str]) -> GuestPlan:
    doc = parse_body(body)
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "'messages' must be a non-empty array.", param="messages")
    prompt = [_message(i, m) for i, m in enumerate(messages)]
    return _plan(doc, models, "chat", json.dumps(prompt, ensure_ascii=False).encode())


def completion_plan(body: bytes, models: Sequence[str]) -> GuestPlan:
    doc = parse_body(body)
    prompt = doc.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise OpenAIError(400, "'prompt' must be a string (token arrays and batches are not supported).",
                          param="prompt")
    if doc.get("echo"):
        raise OpenAIError(400, "'echo' is not supported.", param="echo")
    return _plan(doc, models, "text", _utf8(prompt, "prompt"))


def models_list(models: Sequence[str], created: int) -> dict[str, Any]:
    return {"object": "list",
            "data": [{"id": m, "object": "model", "created": created, "owned_by": "kwasi"} for m in models]}


def _message(i: int, m: Any) -> dict[str, str]:
    param = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise OpenAIError(400, f"{param} must be an object with a role in {sorted(ROLES)}.", param=param)
    content = m.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):  # content parts: only text is something this server can feed a model
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise OpenAIError(400, f"{param}.content: only text parts are supported.", param=param)
            texts.append(part["text"])
        content = "".join(texts)
    elif not isinstance(content, str):
        raise OpenAIError(400, f"{param}.content must be a string or an array of text parts.", param=param)
    _utf8(content, param)
    return {"role": m["role"], "content": content}


def _plan(doc: dict[str, Any], models: Sequence[str], kind: str, prompt: bytes) -> GuestPlan:
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "'model' must be a non-empty string.", param="model")
    if model not in models:
        raise OpenAIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
    stream = _typed(doc, "stream", bool, False)
    options = doc.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise OpenAIError(400, "'stream_options' must be an object.", param="stream_options")
    include_usage = bool(stream and options and _typed(options, "include_usage", bool, False))
    n = _typed(doc, "n", int, 1)
    if n != 1:
        raise OpenAIError(400, "Only n=1 is supported.", param="n")
    max_tokens = _typed(doc, "max_completion_tokens", int, None)
    if max_tokens is None:
        max_tokens = _typed(doc, "max_tokens", int, None)
    if max_tokens is not None and max_tokens < 1:
        raise OpenAIError(400, "'max_tokens' must be at least 1.", param="max_tokens")
    metadata: dict[str, Any] = {"chat": kind == "chat", "complete-utf8": True}
    temperature = _number(doc, "temperature", 0.0, 2.0)
    if temperature is not None:
        metadata["temp"] = temperature
    top_p = _number(doc, "top_p", 0.0, 1.0)
    if top_p is not None:
        metadata["top-p"] = top_p
    seed = _typed(doc, "seed", int, None)
    if seed is not None:
        metadata["seed"] = seed
    stops = _stops(doc.get("stop"))
    request_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
    env = [
        ("KWASI_MODEL", model),
        ("KWASI_NN_METADATA", json.dumps(metadata)),
        ("KWASI_OPENAI_KIND", kind),
        ("KWASI_OPENAI_ID", request_id),
        ("KWASI_OPENAI_CREATED", str(int(time.time()))),
        ("KWASI_OPENAI_MODEL_JSON", json.dumps(model)),
        ("KWASI_STREAM", "1" if stream else "0"),
        ("KWASI_INCLUDE_USAGE", "1" if include_usage else "0"),
        ("KWASI_MAX_TOKENS", str(max_tokens or 0)),
        ("KWASI_STOP_COUNT", str(len(stops))),
        *((f"KWASI_STOP_{i}", s) for i, s in enumerate(stops)),
    ]
    return GuestPlan(model, prompt, env, stream)


def _typed(doc: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = doc.get(key)
    if value is None:
        return default
    # JSON true is a Python int; an integer field must not accept it.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise OpenAIError(400, f"'{key}' must be {'a boolean' if kind is bool else 'an integer'}.", param=key)
    return value


def _number(doc: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OpenAIError(400, f"'{key}' must be a number.", param=key)
    if not low <= value <= high:
        raise OpenAIError(400, f"'{key}' must be between {low:g} and {high:g}.", param=key)
    return float(value)


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise OpenAIError(400, "'stop' must be a string or an array of strings.", param="stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise OpenAIError(400, f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences.", param="stop")
    for s in stops:
        _utf8(s, "stop")
        if "\0" in s:
            raise OpenAIError(400, "'stop' sequences cannot contain NUL.", param="stop")
    return [s for s in stops if s]


def _utf8(text: str, param: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped in the JSON
        raise OpenAIError(400, f"'{param}' is not valid Unicode.", param=param) from None
