"""kwasi's WASI-NN extensions for the OpenAI surface, on output indices WasmEdge leaves unused (0 is the text,
1 the metadata JSON). Any guest can use them; the chat guest pastes their JSON into its responses.

| call | index | bytes |
|---|---|---|
| `get_output` | 2 | every tool call so far, as an assistant message's `tool_calls` JSON array (`[]` without tools) |
| `get_output` | 3 | the prompt's token ids, a JSON array (after `set_input`) |
| `get_output` | 4 | the prompt's text: the decoded ids (a prompt given as an I32 tensor of ids, detokenized) |
| `get_output_single` | 2 | the last step's tool-call deltas, OpenAI's `delta.tool_calls` JSON array (empty when none) |
| `get_output_single` | 3 | the last token's logprobs (`"logprobs": true`): an entry of chat `logprobs.content` |
| `get_output_single` | 4 | the same for completions: token (JSON string), logprob, `{token: logprob}`; one a line |

The prompt itself may be an I32 tensor of token ids on `set_input(0)` instead of UTF-8 text.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping, Sequence
from typing import Any

from kwasi_runtime.backends.llm.chat import ChatTemplateError, parse_messages, render_chat
from kwasi_runtime.backends.llm.constraint import (
    Constraint,
    grammar_from_gbnf,
    grammar_from_json_schema,
    grammar_from_lark,
)
from kwasi_runtime.backends.llm.options import Options
from kwasi_runtime.backends.llm.sampling import TokenLogprobs
from kwasi_runtime.backends.llm.tokenizer import TextTokenizer
from kwasi_runtime.backends.llm.tool_calls import (
    ToolCallParser,
    ToolSetup,
    forced_grammar,
    native_tools,
    prepare_messages,
    setup,
)

__all__ = ["ToolSetup", "ToolStream", "chat_prompt", "constraint_for"]
from kwasi_runtime.nn.abi import Errno, NNError

TOOL_CALLS, PROMPT_IDS, PROMPT_TEXT = 2, 3, 4  # get_output
TOOL_DELTAS, CHAT_LOGPROBS, COMPLETION_LOGPROBS = 2, 3, 4  # get_output_single


def chat_prompt(tok: TextTokenizer, raw: str, options: Options) -> tuple[str, ToolSetup | None]:
    """The chat messages rendered with the model's template (tools included unless tool_choice is none)."""
    try:
        messages = parse_messages(raw)
        tools = setup(tok.chat_template, options.tools) if options.tools and options.tool_choice != "none" else None
        native = native_tools(tok.chat_template)
        text = render_chat(tok.chat_template, prepare_messages(messages, tools, native), tok.bos_token, tok.eos_token,
                           tools=tools.tools if tools is not None and tools.native else None)
    except ChatTemplateError as exc:
        raise NNError(Errno.INVALID_ARGUMENT, str(exc)) from exc
    return text, tools


def constraint_for(tok: TextTokenizer, options: Options, tools: ToolSetup | None) -> Constraint | None:
    """The grammar the output must follow: `grammar`, else `json-schema`, else a forced tool call."""
    if options.grammar:
        return Constraint(tok, grammar_from_gbnf(options.grammar))
    if options.json_schema:
        return Constraint(tok, grammar_from_json_schema(options.json_schema))
    if tools is not None:
        lark = forced_grammar(tools, options.tool_choice, options.parallel_tool_calls)
        if lark is not None:
            return Constraint(tok, grammar_from_lark(lark))
    return None


class ToolStream:
    """Generated pieces (bytes) → content text and tool-call deltas, as they stream."""

    def __init__(self, tools: ToolSetup, parallel: bool) -> None:
        self.parser = ToolCallParser(tools.format, parallel)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.last_deltas: list[dict[str, Any]] = []

    def feed(self, piece: bytes) -> bytes:
        content, self.last_deltas = self.parser.feed(self._decoder.decode(piece))
        return content.encode()

    def finish(self) -> bytes:
        content, self.last_deltas = self.parser.feed(self._decoder.decode(b"", final=True))
        rest, deltas = self.parser.finish()
        self.last_deltas += deltas
        return (content + rest).encode()

    def deltas_json(self) -> bytes:
        return json.dumps(self.last_deltas, ensure_ascii=False).encode() if self.last_deltas else b""

    def calls_json(self) -> bytes:
        return json.dumps(self.parser.tool_calls(), ensure_ascii=False).encode()


def _token(tok: TextTokenizer, token: int) -> tuple[str, list[int]]:
    piece = tok.piece(token)
    return piece.decode("utf-8", errors="replace"), list(piece)


def chat_logprobs(tok: TextTokenizer, lp: TokenLogprobs | None) -> bytes:
    if lp is None:
        return b""
    text, raw = _token(tok, lp.token)
    top = []
    for token, logprob in lp.top:
        t, b = _token(tok, token)
        top.append({"token": t, "logprob": logprob, "bytes": b})
    return json.dumps({"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top},
                      ensure_ascii=False).encode()


def completion_logprobs(tok: TextTokenizer, lp: TokenLogprobs | None) -> bytes:
    if lp is None:
        return b""
    top: dict[str, float] = {}
    for token, logprob in lp.top:
        top.setdefault(_token(tok, token)[0], logprob)
    lines = [json.dumps(_token(tok, lp.token)[0], ensure_ascii=False), json.dumps(lp.logprob),
             json.dumps(top, ensure_ascii=False)]
    return "\n".join(lines).encode()


def prompt_outputs(tok: TextTokenizer, ids: Sequence[int]) -> Mapping[int, bytes]:
    return {PROMPT_IDS: json.dumps(list(ids)).encode(), PROMPT_TEXT: tok.decode(ids).encode()}


def token_ids(data: bytes, vocab: int) -> list[int]:
    """A prompt given as an I32 tensor: little-endian token ids, each inside the vocabulary."""
    if len(data) % 4:
        raise NNError(Errno.INVALID_ARGUMENT, "an I32 prompt must be a whole number of 4-byte ids")
    ids = [int.from_bytes(data[i:i + 4], "little", signed=True) for i in range(0, len(data), 4)]
    if any(not 0 <= t < vocab for t in ids):
        raise NNError(Errno.INVALID_ARGUMENT, f"token ids must be between 0 and {vocab - 1}")
    return ids
