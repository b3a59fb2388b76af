"""The OpenAI surface agent frameworks use, driven by the official `openai` client through the chat guest and
WASI-NN into the real LLM backend (a tiny generated model: fast, and whatever it writes, the grammar holds)."""

from __future__ import annotations

import base64
import json
import logging
import math
import struct
import time
from collections.abc import Iterator
from typing import Any, Literal

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import BaseModel

from kwasi_runtime.backends.llm import LlmBackend
from kwasi_runtime.nn.abi import ExecutionTarget
from kwasi_testing.gguf_models import random_llama_file
from kwasi_testing.serving import ServerThread, request

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER: ChatCompletionToolParam = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]},
                                                    "tomorrow": {"type": "boolean"}},
                   "required": ["unit", "tomorrow"], "additionalProperties": False}}}
CLOCK: ChatCompletionToolParam = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}}


class Verdict(BaseModel):
    sunny: bool
    color: Literal["red", "green", "blue"]


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    path = random_llama_file(tmp_path_factory, seed=21, context_length=2048)
    s = ServerThread(LlmBackend().preload([path], ExecutionTarget.CPU), wagi=False, timeout_s=60.0)
    yield s
    s.stop()


@pytest.fixture
def client(llm: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{llm.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def check_weather(arguments: str) -> None:
    args = json.loads(arguments)
    assert args["unit"] in ("celsius", "fahrenheit") and isinstance(args["tomorrow"], bool), args


@pytest.mark.parametrize("choice", ["required", "named"])
def test_forced_tool_call(client: openai.OpenAI, choice: str) -> None:
    reply = client.chat.completions.create(
        model="default", messages=QUESTION, tools=[CLOCK, WEATHER], seed=4, parallel_tool_calls=False,
        tool_choice="required" if choice == "required" else {"type": "function", "function": {"name": "get_weather"}})
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content is None and message.tool_calls
    call = message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    if choice == "named":
        assert call.function.name == "get_weather"
    if call.function.name == "get_weather":
        check_weather(call.function.arguments)
    else:
        assert json.loads(call.function.arguments) == {}


def test_streamed_tool_call_as_openai_streams_it(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="default", messages=QUESTION, tools=[WEATHER], stream=True, seed=9,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].type == "function" and deltas[0].function is not None
    assert deltas[0].function.name == "get_weather" and deltas[0].function.arguments == ""
    assert len(deltas) > 2  # the arguments came in pieces, as they were generated
    assert all(d.index == 0 for d in deltas)
    check_weather("".join(d.function.arguments or "" for d in deltas if d.function))
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]


def test_tool_choice_none_and_tool_results_in_history(client: openai.OpenAI, llm: ServerThread) -> None:
    history: list[ChatCompletionMessageParam] = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_7", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"unit": "celsius", "tomorrow": false}'}}]},
        {"role": "tool", "tool_call_id": "call_7", "content": "sunny, 24"},
    ]
    reply = client.chat.completions.create(model="default", messages=history, tools=[WEATHER], tool_choice="none",
                                           max_tokens=3, seed=1)
    assert reply.choices[0].finish_reason == "length" and not reply.choices[0].message.tool_calls
    # What the template got: /tokenize renders the same messages, /detokenize shows the text.
    tokens = request(llm.url, "POST", "/tokenize", body=json.dumps({"model": "default", "messages": [
        *history, {"role": "user", "content": "thanks"}]}).encode()).json()
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 2048
    text = request(llm.url, "POST", "/detokenize", body=json.dumps(
        {"model": "default", "tokens": tokens["tokens"]}).encode()).json()["prompt"]
    assert '{"name": "get_weather", "arguments": {"unit": "celsius", "tomorrow": false}}' in text
    assert "sunny, 24" in text


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    for seed in (1, 2):
        completion = client.beta.chat.completions.parse(model="default", messages=QUESTION, response_format=Verdict,
                                                        seed=seed)
        parsed = completion.choices[0].message.parsed
        assert isinstance(parsed, Verdict)


def test_json_schema_response_format_streams_valid_json(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"n": {"enum": [1, 2, 3]}, "ok": {"type": "boolean"}},
              "required": ["n", "ok"], "additionalProperties": False}
    chunks = list(client.chat.completions.create(
        model="default", messages=QUESTION, stream=True, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}))
    doc = json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
    assert doc["n"] in (1, 2, 3) and isinstance(doc["ok"], bool)


def test_chat_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="default", messages=QUESTION, logprobs=True, top_logprobs=2,
                                           max_tokens=5, temperature=0)
    lp = reply.choices[0].logprobs
    assert lp is not None and lp.content is not None and len(lp.content) == 5
    for entry in lp.content:
        assert len(entry.top_logprobs) == 2
        assert entry.token == entry.top_logprobs[0].token  # greedy took the most likely token
        assert entry.logprob <= 0 and math.isfinite(entry.logprob)
    stream = list(client.chat.completions.create(model="default", messages=QUESTION, logprobs=True, max_tokens=5,
                                                 temperature=0, stream=True))
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs
                for e in (c.choices[0].logprobs.content or [])]
    assert [e.token for e in streamed] == [e.token for e in lp.content]


def test_completion_logprobs(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="default", prompt="Once", logprobs=2, max_tokens=4, temperature=0)
    lp = reply.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and len(lp.tokens) == 4
    assert lp.token_logprobs is not None and len(lp.token_logprobs) == 4
    assert lp.top_logprobs is not None and all(1 <= len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset is not None and lp.text_offset == sorted(lp.text_offset)


def test_logit_bias_and_token_prompts(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="default", prompt=[72, 105], max_tokens=4, temperature=0,
                                      logit_bias={str(ord("z")): 100})
    assert reply.choices[0].text == "zzzz"
    assert reply.usage is not None and reply.usage.prompt_tokens == 2


def test_embeddings_float_and_base64(client: openai.OpenAI, llm: ServerThread) -> None:
    floats = client.embeddings.create(model="default", input=["hello", "world"], encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1]
    vector = floats.data[0].embedding
    assert len(vector) == 64 and abs(math.sqrt(sum(x * x for x in vector)) - 1) < 1e-4
    assert floats.usage.prompt_tokens == len("hello") + len("world")
    raw = request(llm.url, "POST", "/v1/embeddings", body=json.dumps(
        {"model": "default", "input": "hello", "encoding_format": "base64"}).encode()).json()
    decoded = struct.unpack("<64f", base64.b64decode(raw["data"][0]["embedding"]))
    assert decoded == pytest.approx(vector, abs=1e-6)
    default = client.embeddings.create(model="default", input="hello")  # the client asks for base64 itself
    assert default.data[0].embedding == pytest.approx(vector, abs=1e-6)
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="default", input="x", dimensions=8)
    assert e.value.body["param"] == "dimensions"  # type: ignore[index]


def test_models_version_fingerprint_request_id(client: openai.OpenAI, llm: ServerThread,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kwasi_runtime.serve.server")
    assert client.models.retrieve("default").id == "default"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    version = request(llm.url, path="/version").json()
    assert version["version"]
    reply = client.chat.completions.create(model="default", messages=QUESTION, max_tokens=1)
    assert reply.system_fingerprint == "fp_kwasi-pytorch_b0"
    echoed = request(llm.url, "POST", "/v1/chat/completions", headers={"X-Request-Id": "abc-123"},
                     body=json.dumps({"model": "default", "messages": QUESTION, "max_tokens": 1}).encode())
    assert echoed.headers["x-request-id"] == "abc-123"
    line = "request abc-123: POST /v1/chat/completions -> 200"
    deadline = time.monotonic() + 5  # the log line follows the response's last byte
    while not any(line in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any(line in r.getMessage() for r in caplog.records)
    fresh = request(llm.url, path="/v1/models")
    assert len(fresh.headers["x-request-id"]) == 32


@pytest.mark.parametrize(("body", "param"), [
    ({"foo": 1}, "foo"), ({"n": 2}, "n"), ({"presence_penalty": -1}, "presence_penalty"),
    ({"modalities": ["audio"]}, "modalities"), ({"top_logprobs": 3}, "top_logprobs"),
    ({"tool_choice": "required"}, "tool_choice"), ({"response_format": {"type": "xml"}}, "response_format"),
    ({"logit_bias": {"a": 1}}, "logit_bias"),
    ({"logit_bias": {"²": 1}}, "logit_bias"), ({"store": True}, "store"), ({"seed": 2**70}, "seed"),
    ({"max_tokens": 10**9}, "max_tokens"), ({"tools": [{"type": "function", "function": {"name": "a b"}}]},
                                            "tools[0]"),
])
def test_every_unsupported_parameter_is_a_400_naming_it(llm: ServerThread, body: dict[str, Any],
                                                         param: str) -> None:
    reply = request(llm.url, "POST", "/v1/chat/completions",
                    body=json.dumps({"model": "default", "messages": QUESTION, **body}).encode())
    assert reply.status == 400, reply.body
    assert reply.json()["error"]["param"] == param


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format", "Invalid type: nonsense"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "pattern": "("}}}}, "response_format", "unclosed group"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/nope"}}}}}]},
     "tools[0].function.parameters", "'/nope' does not exist"),
])
def test_a_schema_that_cannot_be_enforced_is_a_400_with_the_reason(llm: ServerThread, body: dict[str, Any],
                                                                    param: str, words: str) -> None:
    reply = request(llm.url, "POST", "/v1/chat/completions",
                    body=json.dumps({"model": "default", "messages": QUESTION, **body}).encode())
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_sampling_extras_reach_the_sampler(client: openai.OpenAI) -> None:
    # top_k=1 is greedy whatever the temperature; repetition/presence/frequency penalties change the answer.
    plain = client.chat.completions.create(model="default", messages=QUESTION, max_tokens=12, temperature=0)
    top1 = client.chat.completions.create(model="default", messages=QUESTION, max_tokens=12, temperature=1.5,
                                          seed=5, extra_body={"top_k": 1})
    assert top1.choices[0].message.content == plain.choices[0].message.content
    penalised = client.chat.completions.create(model="default", messages=QUESTION, max_tokens=12, temperature=0,
                                               frequency_penalty=2, presence_penalty=2,
                                               extra_body={"repetition_penalty": 3.0, "min_p": 0.5})
    assert penalised.choices[0].message.content != plain.choices[0].message.content
