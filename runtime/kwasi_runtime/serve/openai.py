"""The OpenAI-compatible routes' host side: validate the request, hand the chat guest a flat plan.

The guest does the WASI-NN work and writes the whole HTTP response (SSE or JSON), so everything a client
waits for runs through the sandbox. The host keeps to what C would need a JSON parser for: it checks the
request, turns `messages` into the backend's chat prompt (a JSON list, tool calls and tool results included)
and the rest into WasmEdge metadata JSON (sampling, `json-schema`, `n-probs`, kwasi's `tools` keys), and passes
the rest as environment variables:

    stdin                the prompt: JSON messages (chat), the text or I32 token ids (completions), or the
                         inputs as netstrings `t<len>:<text>` / `i<len>:<I32 ids>` (embeddings)
    KWASI_MODEL          WASI-NN model name for load_by_name
    KWASI_NN_METADATA    JSON for set_input(1) before the prompt
    KWASI_OPENAI_KIND    chat | text | embedding | tokenize | detokenize
    KWASI_OPENAI_ID, KWASI_OPENAI_CREATED, KWASI_OPENAI_MODEL_JSON  pasted into every object
    KWASI_STREAM, KWASI_INCLUDE_USAGE   0 | 1
    KWASI_MAX_TOKENS     generated-token limit (0: none)
    KWASI_STOP_COUNT, KWASI_STOP_0..3   stop sequences, raw bytes
    KWASI_PROMPT_IDS     1: stdin holds the prompt as I32 token ids
    KWASI_TOOLS          1: read tool calls (extension outputs 2) and finish with "tool_calls"
    KWASI_LOGPROBS       0 | 1 (chat entries, output 3) | 2 (completions entries, output 4)
    KWASI_EMBED_BASE64   1: embeddings as base64 float32 (OpenAI's encoding_format)
    KWASI_INPUT_COUNT    embedding inputs in stdin
    KWASI_MAX_MODEL_LEN  the model's context (tokenize's max_model_len)
"""

from __future__ import annotations

import json
import re
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kwasi_runtime.backends.llm.constraint import json_schema_error
from kwasi_runtime.serve import openai_params as p
from kwasi_runtime.serve.openai_params import OpenAIError, bad

__all__ = ["GuestPlan", "OpenAIError", "chat_plan", "completion_plan", "error_body", "parse_body"]

ROLES = {"system", "developer", "user", "assistant", "tool"}
MAX_EMBEDDING_INPUTS = 2048
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
Context = Callable[[str], int | None]  # model name -> its context length, if known
Planner = Callable[[bytes, Sequence[str], Context], "GuestPlan"]


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
    except (ValueError, RecursionError) as e:  # bad JSON, a 5,000-digit number, 100,000 nested arrays
        raise OpenAIError(400, f"We could not parse the JSON body of your request: {str(e)[:200]}") from None
    if not isinstance(doc, dict):
        raise OpenAIError(400, "The request body must be a JSON object.")
    return doc


def model_of(doc: dict[str, Any], models: Sequence[str], required: bool = True) -> str:
    model = doc.get("model")
    if model is None and not required and models:
        return models[0]
    if not isinstance(model, str) or not model:
        raise bad("model", "'model' must be a non-empty string.")
    if model not in models:
        raise OpenAIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
    return model


def chat_plan(body: bytes, models: Sequence[str], context: Context = lambda _: None) -> GuestPlan:
    doc = parse_body(body)
    p.check_fields(doc, p.CHAT_FIELDS)
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "'messages' must be a non-empty array.")
    prompt = [_message(i, m) for i, m in enumerate(messages)]
    modalities = doc.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise bad("modalities", "Only the text modality is supported.")
    meta: dict[str, Any] = {"chat": True}
    tools = _tools(doc, meta)
    _response_format(doc, meta, tools)
    logprobs = p.typed(doc, "logprobs", bool, False)
    top = p.integer(doc, "top_logprobs", 0, p.MAX_TOP_LOGPROBS)
    if top is not None and not logprobs:
        raise bad("top_logprobs", "'top_logprobs' needs 'logprobs' set to true.")
    if logprobs:
        meta |= {"logprobs": True, "n-probs": top or 0}
    extra = [("KWASI_TOOLS", "1" if tools else "0"), ("KWASI_LOGPROBS", "1" if logprobs else "0")]
    return _generation(doc, models, context, "chat", json.dumps(prompt, ensure_ascii=False).encode(), meta, extra)


def completion_plan(body: bytes, models: Sequence[str], context: Context = lambda _: None) -> GuestPlan:
    doc = parse_body(body)
    p.check_fields(doc, p.COMPLETION_FIELDS)
    prompt, ids = _prompt(doc.get("prompt"), "prompt")
    if p.typed(doc, "echo", bool, False):
        raise bad("echo", "'echo' is not supported.")
    if p.typed(doc, "suffix", str, ""):
        raise bad("suffix", "'suffix' is not supported (no fill-in-the-middle).")
    if p.integer(doc, "best_of", 1, 1 << 31) not in (None, 1):
        raise bad("best_of", "Only best_of=1 is supported.")
    meta: dict[str, Any] = {"chat": False}
    logprobs = p.integer(doc, "logprobs", 0, p.MAX_COMPLETION_LOGPROBS)
    if logprobs is not None:
        meta |= {"logprobs": True, "n-probs": logprobs}
    extra = [("KWASI_PROMPT_IDS", "1" if ids else "0"), ("KWASI_LOGPROBS", "0" if logprobs is None else "2")]
    return _generation(doc, models, context, "text", prompt, meta, extra)


def embedding_plan(body: bytes, models: Sequence[str], context: Context = lambda _: None) -> GuestPlan:
    doc = parse_body(body)
    p.check_fields(doc, {"model", "input", "encoding_format", "dimensions", "user"})
    model = model_of(doc, models)
    raw = doc.get("input")
    items: list[Any] = raw if isinstance(raw, list) and raw and not _is_ids(raw) else [raw]
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise bad("input", f"'input' takes at most {MAX_EMBEDDING_INPUTS} items.")
    stdin = bytearray()
    for item in items:
        data, ids = _prompt(item, "input")
        stdin += b"%c%d:%s" % (b"i" if ids else b"t", len(data), data)
    encoding = p.typed(doc, "encoding_format", str, "float")
    if encoding not in ("float", "base64"):
        raise bad("encoding_format", "'encoding_format' must be 'float' or 'base64'.")
    if doc.get("dimensions") is not None:
        raise bad("dimensions", "'dimensions' is not supported: the model's embedding size is fixed.")
    p.typed(doc, "user", str, None)
    env = [*_identity(model, "embedding", "emb-"), ("KWASI_NN_METADATA", json.dumps({"embedding": True})),
           ("KWASI_INPUT_COUNT", str(len(items))), ("KWASI_EMBED_BASE64", "1" if encoding == "base64" else "0")]
    return GuestPlan(model, bytes(stdin), env, False)


def tokenize_plan(body: bytes, models: Sequence[str], context: Context = lambda _: None) -> GuestPlan:
    doc = parse_body(body)
    p.check_fields(doc, {"model", "prompt", "messages", "add_special_tokens", "add_generation_prompt"})
    model = model_of(doc, models, required=False)
    if (doc.get("prompt") is None) == (doc.get("messages") is None):
        raise bad("prompt", "Give exactly one of 'prompt' or 'messages'.")
    if p.typed(doc, "add_special_tokens", bool, True) is False:
        raise bad("add_special_tokens", "'add_special_tokens': false is not supported.")
    if p.typed(doc, "add_generation_prompt", bool, True) is False:
        raise bad("add_generation_prompt", "'add_generation_prompt': false is not supported.")
    if doc.get("messages") is not None:
        messages = doc["messages"]
        if not isinstance(messages, list) or not messages:
            raise bad("messages", "'messages' must be a non-empty array.")
        stdin, meta = json.dumps([_message(i, m) for i, m in enumerate(messages)]).encode(), {"chat": True}
    else:
        stdin, meta = p.utf8(p.typed(doc, "prompt", str, ""), "prompt"), {"chat": False}
    env = [*_identity(model, "tokenize", "tok-"), ("KWASI_NN_METADATA", json.dumps(meta)),
           ("KWASI_MAX_MODEL_LEN", str(context(model) or 0))]
    return GuestPlan(model, stdin, env, False)


def detokenize_plan(body: bytes, models: Sequence[str], context: Context = lambda _: None) -> GuestPlan:
    doc = parse_body(body)
    p.check_fields(doc, {"model", "tokens"})
    model = model_of(doc, models, required=False)
    tokens = doc.get("tokens")
    if not isinstance(tokens, list) or not _is_ids(tokens):
        raise bad("tokens", "'tokens' must be a non-empty array of token ids.")
    env = [*_identity(model, "detokenize", "detok-"), ("KWASI_NN_METADATA", "{}")]
    return GuestPlan(model, _i32(tokens, "tokens"), env, False)


def models_list(models: Sequence[str], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(m, created) for m in models]}


def model_card(model: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": "kwasi"}


# -- pieces -----------------------------------------------------------------------------------------------
def _identity(model: str, kind: str, prefix: str) -> list[tuple[str, str]]:
    return [("KWASI_MODEL", model), ("KWASI_OPENAI_KIND", kind), ("KWASI_OPENAI_ID", prefix + uuid.uuid4().hex),
            ("KWASI_OPENAI_CREATED", str(int(time.time()))), ("KWASI_OPENAI_MODEL_JSON", json.dumps(model))]


def _generation(doc: dict[str, Any], models: Sequence[str], context: Context, kind: str, prompt: bytes,
                meta: dict[str, Any], extra: list[tuple[str, str]]) -> GuestPlan:
    model = model_of(doc, models)
    stream, include_usage = p.common(doc)
    limit = p.max_tokens(doc, context(model), kind == "chat")
    meta = {**meta, "complete-utf8": True, **p.sampling_metadata(doc)}
    if limit:  # the guest stops at max_tokens itself; the backend checks that the prompt leaves room for them
        meta |= {"n-predict": limit, "reserve-n-predict": True}
    stops = p.stops(doc.get("stop"))
    env = [
        *_identity(model, kind, "chatcmpl-" if kind == "chat" else "cmpl-"),
        ("KWASI_NN_METADATA", json.dumps(meta, ensure_ascii=False)),
        ("KWASI_STREAM", "1" if stream else "0"),
        ("KWASI_INCLUDE_USAGE", "1" if include_usage else "0"),
        ("KWASI_MAX_TOKENS", str(limit or 0)),
        ("KWASI_STOP_COUNT", str(len(stops))),
        *((f"KWASI_STOP_{i}", s) for i, s in enumerate(stops)),
        *extra,
    ]
    return GuestPlan(model, prompt, env, stream)


def _message(i: int, m: Any) -> dict[str, Any]:
    param = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise bad(param, f"{param} must be an object with a role in {sorted(ROLES)}.")
    p.check_fields(m, {"role", "content", "name", "tool_calls", "tool_call_id", "refusal", "function_call"})
    if m.get("function_call") is not None:
        raise bad(param, f"{param}.function_call is deprecated and not supported; use tool_calls.")
    content = m.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):  # content parts: only text is something this server can feed a model
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(param, f"{param}.content: only text parts are supported.")
            texts.append(part["text"])
        content = "".join(texts)
    elif not isinstance(content, str):
        raise bad(param, f"{param}.content must be a string or an array of text parts.")
    p.utf8(content, param)
    out: dict[str, Any] = {"role": m["role"], "content": content}
    if m["role"] == "assistant" and m.get("tool_calls") is not None:
        out["tool_calls"] = _history_calls(param, m["tool_calls"])
    if m["role"] == "tool":
        if not isinstance(m.get("tool_call_id"), str):
            raise bad(param, f"{param}.tool_call_id must be a string for a tool message.")
        out["tool_call_id"] = m["tool_call_id"]
    if isinstance(m.get("name"), str):
        out["name"] = m["name"]
    return out


def _history_calls(param: str, calls: Any) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise bad(param, f"{param}.tool_calls must be an array.")
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(
                fn.get("arguments", ""), str):
            raise bad(param, f'{param}.tool_calls entries are {{"id", "type": "function", "function": '
                             f'{{"name", "arguments"}}}}.')
        out.append({"id": str(call.get("id", "")), "type": "function",
                    "function": {"name": fn["name"], "arguments": fn.get("arguments", "")}})
    return out


def _tools(doc: dict[str, Any], meta: dict[str, Any]) -> bool:
    """Checks tools/tool_choice/parallel_tool_calls into metadata; True when the answer may hold calls."""
    tools, choice = doc.get("tools"), doc.get("tool_choice")
    parallel = p.typed(doc, "parallel_tool_calls", bool, True)
    if tools is None:
        if choice not in (None, "none"):
            raise bad("tool_choice", "'tool_choice' needs 'tools'.")
        return False
    if not isinstance(tools, list) or len(tools) > 128:
        raise bad("tools", "'tools' must be an array of at most 128 tools.")
    names = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not FUNCTION_NAME.fullmatch(
                fn["name"]):
            raise bad(f"tools[{i}]", f'tools[{i}] must be {{"type": "function", "function": {{"name": ...}}}} '
                                     "with a name of letters, digits, _ or - (64 at most).")
        if not isinstance(fn.get("parameters", {}), dict):
            raise bad(f"tools[{i}].function.parameters", "'parameters' must be a JSON schema object.")
        if error := json_schema_error(fn.get("parameters", {})):
            raise bad(f"tools[{i}].function.parameters", f"'parameters' cannot be enforced: {error}")
        names.append(fn["name"])
    choice = "auto" if choice is None else choice
    if isinstance(choice, dict):
        fn = choice.get("function") if choice.get("type") == "function" else None
        if not isinstance(fn, dict) or fn.get("name") not in names:
            raise bad("tool_choice", "'tool_choice' must name one of the tools.")
        choice = {"type": "function", "function": {"name": fn["name"]}}
    elif choice not in ("auto", "none", "required"):
        raise bad("tool_choice", "'tool_choice' must be 'auto', 'none', 'required' or a named function.")
    if not tools or choice == "none":
        return False
    meta |= {"tools": tools, "tool-choice": choice, "parallel-tool-calls": parallel}
    return True


def _response_format(doc: dict[str, Any], meta: dict[str, Any], tools: bool) -> None:
    fmt = p.typed(doc, "response_format", dict, None)
    if fmt is None or fmt.get("type") == "text":
        return
    if fmt.get("type") == "json_object":
        schema: Any = {"type": "object"}
    elif fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad("response_format", "'response_format.json_schema' needs a 'name' and a 'schema'.")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise bad("response_format", "'response_format.json_schema.schema' must be a JSON schema object.")
    else:
        raise bad("response_format", "'response_format.type' must be 'text', 'json_object' or 'json_schema'.")
    if tools and meta.get("tool-choice") != "auto":
        raise bad("response_format", "'response_format' cannot be combined with a forced 'tool_choice'.")
    if error := json_schema_error(schema):
        raise bad("response_format", f"'response_format.json_schema.schema' cannot be enforced: {error}")
    meta["json-schema"] = json.dumps(schema, ensure_ascii=False)


def _is_ids(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _prompt(value: Any, param: str) -> tuple[bytes, bool]:
    """(stdin bytes, as token ids?) for a prompt: a string or token ids, or a batch of one."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]
    if isinstance(value, str):
        if not value and param == "input":
            raise bad(param, f"'{param}' must not be empty.")
        return p.utf8(value, param), False
    if isinstance(value, list) and _is_ids(value):
        return _i32(value, param), True
    raise bad(param, f"'{param}' must be a string or an array of token ids (batches are not supported).")


def _i32(ids: list[int], param: str) -> bytes:
    if any(not 0 <= t < 1 << 31 for t in ids):
        raise bad(param, f"'{param}' token ids must be between 0 and 2^31-1.")
    return struct.pack(f"<{len(ids)}i", *ids)
