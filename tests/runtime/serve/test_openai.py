"""The OpenAI-compatible routes, driven by the official `openai` client against the real server.

The chat guest (guests/openai_chat.c) runs every request through WASI-NN; the scripted model makes the
tokens, the usage numbers and the timing exact.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from kwasi_testing.serving import ANSWER, ScriptedTokens, ServerThread, request, sse_events

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
TEXT = "".join(ANSWER)


@pytest.fixture
def client(server: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def test_chat_completion(client: openai.OpenAI, model: ScriptedTokens) -> None:
    reply = client.chat.completions.create(model="default", messages=QUESTION)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "default"
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == TEXT
    assert choice.finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(model.prompts[0].split())
    assert reply.usage.completion_tokens == len(ANSWER) + 1  # the end-of-generation token counts
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert json.loads(model.prompts[0]) == QUESTION  # messages reach the backend's chat mode as JSON
    assert model.metadata[0]["chat"] is True


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="default", messages=QUESTION, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(ANSWER) + 1
    assert all(c.id == chunks[0].id for c in chunks)


def test_stream_frames_are_sse_and_end_with_done(server: ServerThread) -> None:
    body = json.dumps({"model": "default", "messages": QUESTION, "stream": True}).encode()
    reply = request(server.url, "POST", "/v1/chat/completions", body=body,
                    headers={"Content-Type": "application/json"})
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = list(sse_events(reply.body))
    assert events[-1] == "[DONE]"
    docs = [json.loads(e) for e in events[:-1]]
    assert all(d["object"] == "chat.completion.chunk" for d in docs)
    assert all("usage" not in d for d in docs)  # only with stream_options.include_usage
    # One event per token: the guest flushes each as it comes.
    assert len(docs) == 1 + len(ANSWER) + 1


def test_max_tokens_is_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="default", messages=QUESTION, max_tokens=3)
    assert reply.choices[0].message.content == "".join(ANSWER[:3])
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 3


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence_across_tokens_is_never_sent(client: openai.OpenAI, stream: bool) -> None:
    # " is Pa" spans the " is" and " Paris" tokens: " is" must be held back, then dropped.
    stop = ["zzz", " is Pa"]
    if stream:
        chunks = list(client.chat.completions.create(model="default", messages=QUESTION, stop=stop, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == ["stop"]
    else:
        reply = client.chat.completions.create(model="default", messages=QUESTION, stop=stop)
        text = reply.choices[0].message.content or ""
        assert reply.choices[0].finish_reason == "stop"
    assert text == "The capital of France"


def test_sampling_options_reach_the_backend(client: openai.OpenAI, model: ScriptedTokens) -> None:
    client.chat.completions.create(model="default", messages=QUESTION, temperature=0.5, top_p=0.9,
                                   seed=7)
    assert model.metadata[0] == {"chat": True, "complete-utf8": True, "temp": 0.5, "top-p": 0.9, "seed": 7}


def test_completions(client: openai.OpenAI, model: ScriptedTokens) -> None:
    reply = client.completions.create(model="default", prompt="Once upon a time", max_tokens=2)
    assert reply.object == "text_completion"
    assert reply.choices[0].text == "".join(ANSWER[:2])
    assert reply.choices[0].finish_reason == "length"
    assert model.prompts[0] == b"Once upon a time"
    assert model.metadata[0]["chat"] is False
    chunks = list(client.completions.create(model="default", prompt="Once", stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 1


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["default"]


def test_malformed_json_is_400_with_an_error_object(server: ServerThread) -> None:
    reply = request(server.url, "POST", "/v1/chat/completions", body=b'{"model": "default", "messages": [',
                    headers={"Content-Type": "application/json"})
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and "JSON" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_invalid_requests(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=QUESTION)
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="default", messages=QUESTION, n=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="default", messages=QUESTION, temperature=3)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="default", messages=[])


def test_prompt_too_long_is_400() -> None:
    s = ServerThread(ScriptedTokens(ctx_tokens=2))
    try:
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0) as c, \
                pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="default", messages=QUESTION, stream=True)
        assert e.value.code == "context_length_exceeded"
    finally:
        s.stop()


def test_embeddings_of_a_model_without_an_embedding_mode_are_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="default", input="hello", encoding_format="float")
