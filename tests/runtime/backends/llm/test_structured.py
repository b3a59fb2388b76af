"""Constrained decoding, logprobs, logit bias and tool calls in the LLM backend, through WASI-NN as any guest
uses them: WasmEdge's `grammar` (GBNF), `json-schema` and `n-probs` metadata keys, and kwasi's extensions."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from kwasi_runtime.backends.llm import LlmBackend
from kwasi_runtime.backends.llm.backend import LlmContext, LlmNamedModel
from kwasi_runtime.nn.abi import Errno, ExecutionTarget, NNError, TensorType
from kwasi_runtime.nn.backend_api import Tensor
from kwasi_runtime.sandbox import Limits, Sandbox, WasiSetup
from kwasi_testing.gguf_models import random_llama_file
from kwasi_testing.guests import built_guest
from kwasi_testing.models import host_with

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "days": {"type": "boolean"}},
    "required": ["unit", "days"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_llama_file(tmp_path_factory, seed=7, context_length=2048)


@pytest.fixture(scope="module")
def named(tiny_path: Path) -> LlmNamedModel:
    model = LlmBackend().preload([tiny_path], ExecutionTarget.CPU)
    assert isinstance(model, LlmNamedModel)
    return model


def context(named: LlmNamedModel, meta: dict[str, object], prompt: bytes | list[int] = b"Hello") -> LlmContext:
    ctx = named.graph(None).init_execution_context()
    assert isinstance(ctx, LlmContext)
    data = json.dumps(meta).encode()
    ctx.set_input(1, Tensor((len(data),), TensorType.U8, data))
    if isinstance(prompt, list):
        raw = b"".join(t.to_bytes(4, "little") for t in prompt)
        ctx.set_input(0, Tensor((len(prompt),), TensorType.I32, raw))
    else:
        ctx.set_input(0, Tensor((len(prompt),), TensorType.U8, prompt))
    return ctx


def generate(ctx: LlmContext, limit: int = 300) -> tuple[bytes, list[bytes]]:
    """(text, per-token extension output 2) until end of generation."""
    text, deltas = b"", []
    for _ in range(limit):
        try:
            ctx.compute_single()
        except NNError as e:
            assert e.errno == Errno.END_OF_SEQUENCE
            text += ctx.get_output_single(0)
            deltas.append(ctx.get_output_single(2))
            return text, deltas
        text += ctx.get_output_single(0)
        deltas.append(ctx.get_output_single(2))
    raise AssertionError(f"no end of generation in {limit} tokens: {text!r}")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gbnf_grammar_key_constrains_the_output(named: LlmNamedModel, seed: int) -> None:
    ctx = context(named, {"grammar": 'root ::= ("yes" | "no") " " [0-9] [0-9]?', "temp": 1.0, "seed": seed,
                          "top-k": 0, "top-p": 1.0, "min-p": 0.0})
    text, _ = generate(ctx)
    assert re.fullmatch(rb"(yes|no) [0-9][0-9]?", text), text


def test_json_schema_key_gives_schema_valid_json(named: LlmNamedModel) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green"]}},
              "required": ["ok", "color"], "additionalProperties": False}
    for seed in range(3):
        text, _ = generate(context(named, {"json-schema": json.dumps(schema), "temp": 1.0, "seed": seed}))
        doc = json.loads(text)
        assert set(doc) == {"ok", "color"} and isinstance(doc["ok"], bool) and doc["color"] in ("red", "green")


def test_a_bad_grammar_is_invalid_argument(named: LlmNamedModel) -> None:
    with pytest.raises(NNError) as e:
        context(named, {"grammar": "root ::= ("})
    assert e.value.errno == Errno.INVALID_ARGUMENT
    with pytest.raises(NNError):
        context(named, {"json-schema": "{not json"})


def test_any_guest_can_constrain_through_the_graph_config(tiny_path: Path) -> None:
    """The WasmEdge-shaped streaming guest passes `grammar` in load_by_name_with_config, as LlamaEdge would."""
    fresh = LlmBackend().preload([tiny_path], ExecutionTarget.CPU)  # its first graph takes the guest's config
    sandbox = Sandbox(built_guest("llm_stream"), host_with(default=fresh), cache_dir=None)
    out: list[bytes] = []
    config = json.dumps({"grammar": 'root ::= "kwasi" [a-c]+ "!"', "temp": 0.9, "seed": 5})
    result = sandbox.run(WasiSetup(args=["llm_stream", "default", "Hi", config], stdout=out.append),
                         Limits(timeout_s=60))
    assert result.exit_code == 0, result
    assert re.fullmatch(rb"kwasi[a-c]+!\n", b"".join(out)), out  # the guest ends with a newline


def test_n_probs_reports_the_distribution_that_sampled(named: LlmNamedModel) -> None:
    ctx = context(named, {"temp": 0, "logprobs": True, "n-probs": 3})
    for _ in range(4):
        ctx.compute_single()
        entry = json.loads(ctx.get_output_single(3))
        top = entry["top_logprobs"]
        assert len(top) == 3
        assert entry["token"] == top[0]["token"] and entry["logprob"] == top[0]["logprob"]  # greedy: the best
        assert top[0]["logprob"] >= top[1]["logprob"] >= top[2]["logprob"]
        assert sum(math.exp(t["logprob"]) for t in top) <= 1.0 + 1e-6
        assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
        token, logprob, alternatives = ctx.get_output_single(4).decode().split("\n")
        assert json.loads(token) == entry["token"] and json.loads(logprob) == entry["logprob"]
        assert len(json.loads(alternatives)) <= 3


def test_logit_bias_moves_the_choice(named: LlmNamedModel) -> None:
    text = b""
    ctx = context(named, {"temp": 0, "logit-bias": {str(ord("Q")): 100}})
    for _ in range(5):
        ctx.compute_single()
        text += ctx.get_output_single(0)
    assert text == b"QQQQQ"
    with pytest.raises(NNError):
        context(named, {"logit-bias": {"x": 1}})


def test_prompt_as_token_ids_and_back(named: LlmNamedModel) -> None:
    ctx = context(named, {}, list(b"caf\xc3\xa9"))
    assert json.loads(ctx.get_output(3)) == list(b"caf\xc3\xa9")
    assert ctx.get_output(4).decode() == "café"
    with pytest.raises(NNError):
        context(named, {}, [999999])


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_call_is_valid_and_streams(named: LlmNamedModel, choice: object) -> None:
    messages = json.dumps([{"role": "user", "content": "Weather in Paris?"}]).encode()
    ctx = context(named, {"chat": True, "tools": [WEATHER], "tool-choice": choice, "temp": 0.8, "seed": 3,
                          "parallel-tool-calls": False}, messages)
    text, deltas = generate(ctx)
    assert text == b""  # a forced call has no content
    calls = json.loads(ctx.get_output(2))
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    args = json.loads(calls[0]["function"]["arguments"])
    assert args["unit"] in ("celsius", "fahrenheit") and isinstance(args["days"], bool)
    streamed = [d for raw in deltas if raw for d in json.loads(raw)]
    assert streamed[0]["id"] == calls[0]["id"] and streamed[0]["function"]["name"] == "get_weather"
    assert "".join(d["function"]["arguments"] for d in streamed) == calls[0]["function"]["arguments"]


def test_tools_and_history_reach_a_template_without_tool_support(named: LlmNamedModel) -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"},
    ]
    ctx = context(named, {"chat": True, "tools": [WEATHER]}, json.dumps(messages).encode())
    rendered = ctx.get_output(4).decode()
    assert '"name": "get_weather"' in rendered and "<tool_call>" in rendered  # the tools, described
    assert '{"name": "get_weather", "arguments": {"unit": "celsius"}}' in rendered  # the earlier call
    assert "<tool_response>\n21 degrees\n</tool_response>" in rendered


# Tool-aware templates of the two call formats, written for these tests (the shapes Qwen2.5 and Llama 3.1 use).
HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t.function | tojson }}{% endfor %}\n"
    "Answer with <tool_call> calls.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "<tool_call>{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}</tool_call>"
    "{% endfor %}{% else %}{{ m.content }}{% endif %}{% if m.role == 'tool' %} [{{ m.tool_call_id }}]{% endif %}"
    "<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)
LLAMA3_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nCall a function as {\"name\": name, \"parameters\": arguments}. "
    "Functions: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}"
    "{{ {'name': m.tool_calls[0].function.name, 'parameters': m.tool_calls[0].function.arguments} | tojson }}"
    "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)


@pytest.mark.parametrize(("template", "call_key"), [(HERMES_TEMPLATE, "arguments"), (LLAMA3_TEMPLATE, "parameters")])
def test_a_tool_aware_template_renders_tools_and_history(tmp_path_factory: pytest.TempPathFactory, template: str,
                                                         call_key: str) -> None:
    path = random_llama_file(tmp_path_factory, seed=8, context_length=2048, chat_template=template)
    named = LlmBackend().preload([path], ExecutionTarget.CPU)
    assert isinstance(named, LlmNamedModel)
    history = [{"role": "user", "content": "Weather?"},
               {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                   "name": "get_weather", "arguments": '{"unit": "celsius", "days": true}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "21"}]
    ctx = context(named, {"chat": True, "tools": [WEATHER], "tool-choice": "required", "temp": 0.7, "seed": 2,
                          "parallel-tool-calls": False}, json.dumps(history).encode())
    rendered = ctx.get_output(4).decode()
    assert json.dumps(WEATHER["function"]) in rendered or json.dumps([WEATHER]) in rendered  # the template's own
    assert "You may call functions" not in rendered  # not the fallback description
    assert f'{{"name": "get_weather", "{call_key}": {{"unit": "celsius", "days": true}}}}' in rendered
    if template is HERMES_TEMPLATE:
        assert "[call_1]" in rendered  # tool_call_id reached the template
    text, _ = generate(ctx)
    assert text == b""  # the call is not content, in either format (Llama 3.1's answer is the bare JSON call)
    calls = json.loads(ctx.get_output(2))
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    args = json.loads(calls[0]["function"]["arguments"])
    assert args["unit"] in ("celsius", "fahrenheit") and isinstance(args["days"], bool)
