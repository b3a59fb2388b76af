"""The tool-call parser (tool_choice auto): content and calls split correctly however the text is chunked."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kwasi_runtime.backends.llm.tool_calls import ToolCallParser, forced_grammar, setup

HERMES = ('Let me check. <tool_call>\n{"name": "get_weather", "arguments": '
          '{"city": "Paris \\"1\\"", "n": [1, {"a": 2}]}}\n</tool_call>\n'
          '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
LLAMA3 = ' {"name": "get_weather", "parameters": {"city": "Paris"}}'


def run(parser: ToolCallParser, text: str, step: int) -> tuple[str, list[dict[str, Any]]]:
    content, deltas = "", list[dict[str, Any]]()
    for i in range(0, len(text), step):
        c, d = parser.feed(text[i:i + step])
        content, deltas = content + c, deltas + d
    c, d = parser.finish()
    return content + c, deltas + d


@pytest.mark.parametrize("step", [1, 2, 5, 13, 1000])
def test_hermes_calls_split_from_content(step: int) -> None:
    parser = ToolCallParser("hermes")
    content, deltas = run(parser, HERMES, step)
    assert content == "Let me check. "
    calls = parser.tool_calls()
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": 'Paris "1"', "n": [1, {"a": 2}]}
    for call in calls:  # the streamed deltas add up to the final calls, header first
        mine = [d for d in deltas if d["index"] == calls.index(call)]
        assert mine[0]["id"] == call["id"] and mine[0]["function"] == {"name": call["function"]["name"],
                                                                         "arguments": ""}
        assert "".join(d["function"]["arguments"] for d in mine) == call["function"]["arguments"]


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_llama3_json_answer_is_a_call(step: int) -> None:
    parser = ToolCallParser("llama3")
    content, _ = run(parser, LLAMA3, step)
    assert content == ""
    assert json.loads(parser.tool_calls()[0]["function"]["arguments"]) == {"city": "Paris"}


def test_text_that_only_looks_like_a_marker_is_content() -> None:
    parser = ToolCallParser("hermes")
    assert run(parser, "a < b and <tool", 1)[0] == "a < b and <tool"
    assert parser.tool_calls() == []
    llama = ToolCallParser("llama3")
    assert run(llama, "Hello {not a call}", 2)[0] == "Hello {not a call}"


def test_one_call_only_without_parallel_calls() -> None:
    parser = ToolCallParser("hermes", parallel=False)
    content, _ = run(parser, HERMES, 7)
    assert len(parser.tool_calls()) == 1
    assert "<tool_call>" in content  # a second call is left as text: the grammar prevents it when forced


def test_forced_grammar_per_format_and_choice() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    hermes = setup(None, tools)
    assert hermes.format == "hermes" and not hermes.native
    assert forced_grammar(hermes, "auto", True) is None
    assert "call+" in (forced_grammar(hermes, "required", True) or "")
    assert "call+" not in (forced_grammar(hermes, {"type": "function", "function": {"name": "f"}}, False) or "")
    llama = setup('{% if tools %}{"name": ..., "parameters": ...}{% endif %}', tools)
    assert llama.format == "llama3" and llama.native
    assert '"parameters"' in (forced_grammar(llama, "required", True) or "")
