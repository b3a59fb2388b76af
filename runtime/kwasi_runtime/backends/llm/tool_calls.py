"""OpenAI tools over a chat template: rendering, the grammar that forces a call, and parsing calls back.

Two output formats cover the tool-aware templates in use:
* `hermes`: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` (Qwen2.5, Hermes, and the fallback);
* `llama3`: the whole answer is `{"name": ..., "parameters": {...}}` (Llama 3.1+ JSON tool calling).
A template that mentions `tools` gets them as the `tools` variable, as transformers passes them; any other
template (SmolLM2's, plain ChatML) gets a system message describing the tools in the `hermes` format, and
earlier assistant tool calls and tool results written as text.

`tool_choice` `required` and a named function are guaranteed by a grammar (constraint.py): the output must be
calls whose arguments match the function's JSON schema. `auto` parses whatever the model writes; `none`
renders no tools at all.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kwasi_runtime.nn.abi import Errno, NNError

Format = Literal["hermes", "llama3"]
HERMES_OPEN, HERMES_CLOSE = "<tool_call>\n", "\n</tool_call>"
JSON_STYLE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False, "lenient": True}
FALLBACK_PROMPT = (
    "You may call functions to answer. The functions, as JSON schemas:\n{tools}\n"
    "To call one, answer with exactly one line per call:\n"
    '<tool_call>\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n</tool_call>'
)


@dataclass(frozen=True)
class ToolSetup:
    """What a chat request with tools needs: how calls look, and the tools the template should see."""

    format: Format
    tools: list[dict[str, Any]]
    native: bool  # the template renders `tools` itself


def functions(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """The `function` objects of OpenAI tools, checked: a name and an object schema for the parameters."""
    found = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise NNError(Errno.INVALID_ARGUMENT, 'tools must be {"type": "function", "function": {"name": ...}}')
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise NNError(Errno.INVALID_ARGUMENT, f"tool {fn['name']!r}: parameters must be a JSON schema object")
        found.append({**fn, "parameters": params})
    return found


def setup(template: str | None, tools: Sequence[Any]) -> ToolSetup:
    fns = functions(tools)
    source = template or ""
    native = native_tools(template)
    fmt: Format = "llama3" if native and "<tool_call>" not in source and (
        "<|python_tag|>" in source or '"parameters"' in source) else "hermes"
    return ToolSetup(fmt, [{"type": "function", "function": fn} for fn in fns], native)


def native_tools(template: str | None) -> bool:
    """Whether the template renders tools, tool calls and tool results itself."""
    return "tools" in (template or "")


def prepare_messages(messages: Sequence[Mapping[str, Any]], tools: ToolSetup | None,
                     native: bool) -> list[dict[str, Any]]:
    """Messages a template can render: content never null; for a template without tool support, tool calls
    and tool results as text, and the tool list (if any) in a system message (the hermes format)."""
    out = [dict(m) for m in messages]
    for m in out:
        if m.get("content") is None:
            m["content"] = ""
    if native:
        for m in out:  # templates read arguments as objects (transformers' convention), OpenAI sends strings
            for call in m.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    with contextlib.suppress(ValueError):
                        fn["arguments"] = json.loads(fn["arguments"])
        return out
    for m in out:
        calls = m.pop("tool_calls", None) or []
        texts = [HERMES_OPEN + json.dumps({"name": c["function"]["name"], "arguments": _arguments(c)},
                                          ensure_ascii=False) + HERMES_CLOSE
                 for c in calls if isinstance(c, dict) and isinstance(c.get("function"), dict)]
        if texts:
            m["content"] = "\n".join([m["content"], *texts] if m["content"] else texts)
        if m.get("role") == "tool":
            m["content"] = f"<tool_response>\n{m['content']}\n</tool_response>"
    if tools is None:
        return out
    described = FALLBACK_PROMPT.format(tools="\n".join(json.dumps(t["function"], ensure_ascii=False)
                                                        for t in tools.tools))
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0]['content']}\n\n{described}" if out[0]["content"] else described
    else:
        out.insert(0, {"role": "system", "content": described})
    return out


def _arguments(call: Mapping[str, Any]) -> Any:
    raw = call["function"].get("arguments", "{}")
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return raw


def forced_grammar(tools: ToolSetup, choice: str | Mapping[str, Any], parallel: bool) -> str | None:
    """Lark for `required` or a named function (None for auto): only calls, arguments matching the schema."""
    if choice in ("auto", "none"):
        return None
    fns = [t["function"] for t in tools.tools]
    if isinstance(choice, Mapping):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        fns = [f for f in fns if f["name"] == name]
        if not fns:
            raise NNError(Errno.INVALID_ARGUMENT, f"tool_choice names {name!r}, which is not among the tools")
    elif choice != "required":
        raise NNError(Errno.INVALID_ARGUMENT, "tool-choice must be auto, none, required or a named function")
    key = "parameters" if tools.format == "llama3" else "arguments"
    calls = [{"type": "object", "properties": {"name": {"const": f["name"]}, key: f["parameters"]},
              "required": ["name", key], "additionalProperties": False} for f in fns]
    schema = {**(calls[0] if len(calls) == 1 else {"anyOf": calls}), "x-guidance": JSON_STYLE}
    body = "body: %json " + json.dumps(schema)
    if tools.format == "llama3":
        return f"start: body\n{body}"
    repeat = "+" if parallel else ""
    return (f"start: call{repeat}\ncall: {json.dumps(HERMES_OPEN)} body {json.dumps(HERMES_CLOSE + chr(10))}"
            f"\n{body}")


@dataclass
class _Call:
    index: int
    id: str
    text: str = ""  # the call's JSON as written so far
    name: str | None = None
    args_start: int = -1  # where the arguments value starts in `text`
    args_sent: int = 0  # how much of the arguments value went out
    args_end: int = -1


_NAME = re.compile(r'"name"\s*:\s*("(?:[^"\\]|\\.)*")')
_ARGS = re.compile(r'"(?:arguments|parameters)"\s*:\s*')


@dataclass
class ToolCallParser:
    """Splits generated text into content and tool calls as it streams, with OpenAI's delta objects."""

    format: Format
    parallel: bool = True
    calls: list[_Call] = field(default_factory=list)
    _pending: str = ""  # text that may be the start of a call marker
    _current: _Call | None = None
    _seen_content: bool = False
    _after_call: bool = False

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """(content to emit, tool-call deltas) for the next piece of generated text."""
        content, deltas = [], []
        self._pending += text
        while self._pending:
            if self._current is None:
                if self._after_call:  # whitespace right after a call is not content
                    self._pending = self._pending.lstrip()
                    if not self._pending:
                        break
                    self._after_call = False
                start = self._open_at()
                if start is None:
                    break
                if start < 0:  # no call here: all but a possible marker prefix is content
                    keep = self._marker_prefix()
                    content.append(self._pending[:len(self._pending) - keep])
                    self._pending = self._pending[len(self._pending) - keep:]
                    break
                if self.format == "hermes":  # (before a llama3 call there is only whitespace)
                    content.append(self._pending[:start])
                self._pending = self._pending[start + self._open_len():]
                self._current = _Call(len(self.calls), "call_" + uuid.uuid4().hex[:24])
                self.calls.append(self._current)
            deltas += self._advance()
        joined = "".join(content)
        self._seen_content = self._seen_content or bool(joined.strip())
        return joined, deltas

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """Whatever is still held back, at the end of generation."""
        deltas: list[dict[str, Any]] = []
        call = self._current
        if call is not None:
            deltas += self._complete(call, final=True)
        rest, self._pending = self._pending, ""
        return ("" if call is not None else rest), deltas

    def tool_calls(self) -> list[dict[str, Any]]:
        """Every call, as an assistant message's `tool_calls`."""
        return [{"id": c.id, "type": "function",
                 "function": {"name": c.name or "", "arguments": self._arguments(c)}}
                for c in self.calls if c.name is not None]

    # -- internals ----------------------------------------------------------------------------------------
    def _open_len(self) -> int:
        return len(HERMES_OPEN.rstrip("\n")) if self.format == "hermes" else 0

    def _open_at(self) -> int | None:
        """Index of a call's start in the pending text, -1 for none, None to wait for more text."""
        if self.format == "llama3":
            if self._seen_content or (self.calls and not self.parallel):
                return -1
            stripped = self._pending.lstrip()
            if not stripped:
                return None
            return len(self._pending) - len(stripped) if stripped.startswith("{") else -1
        if self.calls and not self.parallel:
            return -1
        return self._pending.find(HERMES_OPEN.rstrip("\n"))

    def _marker_prefix(self) -> int:
        if self.format != "hermes":
            return 0
        marker = HERMES_OPEN.rstrip("\n")
        for n in range(min(len(marker) - 1, len(self._pending)), 0, -1):
            if self._pending.endswith(marker[:n]):
                return n
        return 0

    def _advance(self) -> list[dict[str, Any]]:
        call = self._current
        assert call is not None
        call.text += self._pending
        self._pending = ""
        return self._complete(call, final=False)

    def _complete(self, call: _Call, final: bool) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        if call.name is None and (m := _NAME.search(call.text)):
            call.name = json.loads(m.group(1))
            deltas.append({"index": call.index, "id": call.id, "type": "function",
                           "function": {"name": call.name, "arguments": ""}})
        if call.args_start < 0 and (m := _ARGS.search(call.text)):
            call.args_start = m.end()
        if call.args_start >= 0 and call.args_end < 0:
            end = _value_end(call.text, call.args_start)
            upto = end if end is not None else len(call.text)
            if end is None and not final:
                upto = len(call.text.rstrip())  # trailing spaces may turn out to be after the value
            if end is not None:
                call.args_end = end
            while call.args_sent == 0 and call.args_start < upto and call.text[call.args_start] in " \t\r\n":
                call.args_start += 1
            if call.name is not None and upto > call.args_start + call.args_sent:
                piece = call.text[call.args_start + call.args_sent:upto]
                call.args_sent += len(piece)
                deltas.append({"index": call.index, "function": {"arguments": piece}})
        close = HERMES_CLOSE.strip() if self.format == "hermes" else None
        if call.args_end >= 0:
            tail = call.text[call.args_end:]
            done_at = tail.find(close) if close else (tail.find("}") if "}" in tail else -1)
            if done_at >= 0:
                after = tail[done_at + (len(close) if close else 1):]
                call.text = call.text[:call.args_end + done_at]
                self._current = None
                self._after_call = True
                self._pending = after + self._pending
        if final and call.name is None:
            self.calls.remove(call)  # never became a call: it was text after all
        return deltas

    @staticmethod
    def _arguments(call: _Call) -> str:
        if call.args_start < 0:
            return "{}"
        end = call.args_end if call.args_end >= 0 else len(call.text)
        return call.text[call.args_start:end].strip()


def _value_end(text: str, start: int) -> int | None:
    """End index of the JSON value starting at `start` (after whitespace), None while it is incomplete."""
    i, n = start, len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    if i >= n:
        return None
    if text[i] not in "{[\"":
        m = re.compile(r"-?[0-9.eE+\-]+|true|false|null").match(text, i)
        return m.end() if m and m.end() < n else None
    depth, in_string, escaped = 0, False, False
    for j in range(i, n):
        c = text[j]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
                if depth == 0:
                    return j + 1
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return j + 1
    return None
