"""The accuracy gate: every compute type against the fp32 reference on dequantized weights, on a fixed text.

The text (data/accuracy_text.txt, written for this test) is about 2,400 SmolLM2 tokens. At every position the
candidate's next-token distribution is compared with the reference's (`compute-type: f32`): top-1 agreement
>= 0.99 and mean KL(reference || candidate) <= 0.01. And the greedy chat answer still names Paris.
CUDA types run where a GPU is (`pytest -m cuda`, bench/gpu_check.sh); the reference stays on the CPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kwasi_runtime.backends.llm.generation import LlmGenerator, LoadedModel
from kwasi_runtime.backends.llm.model import Block
from kwasi_runtime.backends.llm.quantize import DEVICE_TYPES, Int8Linear
from kwasi_runtime.backends.llm.sampling import SamplingParams

TEXT = Path(__file__).parent / "data" / "accuracy_text.txt"
MIN_POSITIONS = 2000
TOP1_AGREEMENT, MEAN_KL = 0.99, 0.01
# Chunks, in turn: single-token decode steps (the fused CPU decode kernels: positions 0-299 attended by the
# kernel, 1,020-1,319 by SDPA, past fused_decode.ATTEND_PAIRS), the default batch-size (dense GEMM on CPU), one
# the CPU int4 kernel takes (<= CPU_KERNEL_MAX_ROWS["int4"]) and one the int8 kernel takes: the gate covers
# every path a matrix and an attention take.
DECODE_STEPS = 300
CHUNKS = (*[1] * DECODE_STEPS, 512, 192, 16)

# int8 requantizes each row to one scale, which SmolLM2-135M's Q4_1 blocks do not survive: measured top-1
# 0.971, mean KL 0.0035 (KL passes, top-1 does not). It stays selectable but is never a default; strict, so a
# change that makes it pass shows up here.
INT8_MISSES = pytest.mark.xfail(strict=True, reason="per-row int8 requantization of Q4_1: top-1 ~0.971 < 0.99")
CPU_TYPES = [pytest.param(t, marks=INT8_MISSES) if t == "int8" else t for t in DEVICE_TYPES["cpu"] if t != "f32"]
CUDA_TYPES = ["bf16", pytest.param("int8", marks=INT8_MISSES), "int4"]


@dataclass
class Agreement:
    positions: int
    top1: float
    mean_kl: float


def log_probs(loaded: LoadedModel, ids: list[int]) -> Iterator[torch.Tensor]:
    """fp32 `[T, vocab]` next-token log-probabilities of every position, one prefill chunk at a time."""
    model = loaded.model
    device = model.device
    cache = model.new_cache(1, len(ids))
    with torch.inference_mode():
        start, sizes = 0, itertools.cycle(CHUNKS)
        while start < len(ids):
            end = min(start + next(sizes), len(ids))
            tokens = torch.tensor([ids[start:end]], device=device)
            positions = torch.arange(start, end, device=device).unsqueeze(0)
            logits = model(tokens, positions, cache, kv_len=end)[0]
            yield F.log_softmax(logits.float(), dim=-1).cpu()
            start = end


def agreement(reference: list[torch.Tensor], candidate: Iterator[torch.Tensor]) -> Agreement:
    positions, same, kl = 0, 0, 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        ref32 = ref.float()
        same += int((ref32.argmax(-1) == cand.argmax(-1)).sum())
        # KL(p || q) = sum p (log p - log q), p the reference.
        kl += float(F.kl_div(cand, ref32, log_target=True, reduction="sum"))
        positions += ref.shape[0]
    return Agreement(positions, same / positions, kl / positions)


@pytest.fixture(scope="module")
def text_ids(smollm2: LoadedModel) -> list[int]:
    ids = smollm2.tokenizer.encode(TEXT.read_text(encoding="utf-8"))
    assert len(ids) >= MIN_POSITIONS
    return ids


@pytest.fixture(scope="module")
def reference(smollm2_path: Path, text_ids: list[int]) -> list[torch.Tensor]:
    """The fp32 reference's log-probabilities, kept in fp16 (the whole text is ~240 MB that way). Eager torch
    ops throughout: the fused decode kernels are under test, not part of the reference."""
    f32 = LoadedModel.from_path(smollm2_path, "cpu", "f32")
    f32.model.fused = None
    return [chunk.half() for chunk in log_probs(f32, text_ids)]


def check(compute: str, device: str, smollm2_path: Path, text_ids: list[int],
          reference: list[torch.Tensor]) -> None:
    candidate = LoadedModel.from_path(smollm2_path, device, compute)
    assert candidate.model.compute.name == compute
    assert (candidate.model.fused is not None) == (device == "cpu")  # the decode steps take the shipped path
    result = agreement(reference, log_probs(candidate, text_ids))
    print(f"{compute} on {device}: {result}")
    assert result.positions == len(text_ids)
    assert result.top1 >= TOP1_AGREEMENT, result
    assert result.mean_kl <= MEAN_KL, result
    answer = LlmGenerator(candidate).generate([{"role": "user", "content": "What is the capital of France?"}],
                                              max_tokens=30, sampling=SamplingParams(temp=0.0))
    assert "Paris" in answer.text


@pytest.mark.parametrize("compute", CPU_TYPES)
def test_cpu_compute_type_passes_the_accuracy_gate(compute: str, smollm2_path: Path, text_ids: list[int],
                                                   reference: list[torch.Tensor]) -> None:
    check(compute, "cpu", smollm2_path, text_ids, reference)


@pytest.mark.cuda
@pytest.mark.parametrize("compute", CUDA_TYPES)
def test_cuda_compute_type_passes_the_accuracy_gate(compute: str, smollm2_path: Path, text_ids: list[int],
                                                    reference: list[torch.Tensor]) -> None:
    check(compute, "cuda", smollm2_path, text_ids, reference)


def test_the_gate_catches_a_damaged_model(smollm2_path: Path, text_ids: list[int],
                                          reference: list[torch.Tensor]) -> None:
    """The measure is sensitive: int8 with one layer's down projection zeroed fails it."""
    damaged = LoadedModel.from_path(smollm2_path, "cpu", "int8")
    block = damaged.model.layers[3]
    assert isinstance(block, Block) and isinstance(block.ffn.w2, Int8Linear)
    block.ffn.w2.scales.zero_()
    result = agreement(reference, log_probs(damaged, text_ids))
    assert result.top1 < TOP1_AGREEMENT or result.mean_kl > MEAN_KL, result
