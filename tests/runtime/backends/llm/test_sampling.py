"""Sampling: seeded reproducibility through the backend, and each filter/penalty on hand-made logits."""

from __future__ import annotations

import json

import pytest
import torch

from kwasi_runtime.backends.llm import LlmBackend
from kwasi_runtime.backends.llm.backend import LlmNamedModel
from kwasi_runtime.backends.llm.sampling import Sampler, SamplingParams, apply_penalties
from kwasi_runtime.nn.abi import ExecutionTarget, TensorType
from kwasi_runtime.nn.backend_api import Tensor
from kwasi_testing.gguf_models import random_llama_gguf


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> LlmNamedModel:
    path = tmp_path_factory.mktemp("random") / "random.gguf"
    random_llama_gguf(path)
    named = LlmBackend().preload([path], ExecutionTarget.CPU)
    assert isinstance(named, LlmNamedModel)
    return named


def sample_text(named: LlmNamedModel, seed: int, n: int = 24) -> bytes:
    named._live = None
    config = {"temp": 1.0, "top-k": 0, "top-p": 1.0, "min-p": 0.0, "seed": seed, "ignore-eos": True,
              "n-predict": n}
    ctx = named.graph(json.dumps(config).encode()).init_execution_context()
    ctx.set_input(0, Tensor((1,), TensorType.U8, b"hello"))
    ctx.compute()
    return ctx.get_output(0)


def test_seeded_sampling_is_reproducible(random_model: LlmNamedModel) -> None:
    first = sample_text(random_model, 42)
    assert sample_text(random_model, 42) == first
    assert sample_text(random_model, 7) != first


def test_streaming_restart_reuses_the_seed(random_model: LlmNamedModel) -> None:
    random_model._live = None
    ctx = random_model.graph(b'{"temp": 1.0, "top-k": 0, "min-p": 0.0, "seed": 3, "ignore-eos": true}') \
        .init_execution_context()
    ctx.set_input(0, Tensor((1,), TensorType.U8, b"abc"))
    runs = []
    for _ in range(2):
        pieces = []
        for _ in range(10):
            ctx.compute_single()
            pieces.append(ctx.get_output_single(0))
        runs.append(pieces)
        ctx.fini_single()
    assert runs[0] == runs[1]


def draws(logits: list[float], n: int = 300, **params: float) -> set[int]:
    sampler = Sampler(SamplingParams(seed=0, **params))  # type: ignore[arg-type]
    t = torch.tensor(logits)
    return {sampler.sample(t, []) for _ in range(n)}


def test_greedy_top_k_top_p_min_p() -> None:
    logits = [2.0, 1.0, 0.5, -1.0, 3.0]
    assert draws(logits, 5, temp=0.0) == {4}
    assert draws(logits, temp=1.0, top_k=1) == {4}
    assert draws(logits, temp=1.0, top_k=2, top_p=1.0, min_p=0.0) == {4, 0}
    # softmax: p(4) ~ 0.61, p(0) ~ 0.22: top-p 0.7 needs both, 0.5 only the first.
    assert draws(logits, temp=1.0, top_k=0, top_p=0.7, min_p=0.0) == {4, 0}
    assert draws(logits, temp=1.0, top_k=0, top_p=0.5, min_p=0.0) == {4}
    # min-p 0.3 keeps tokens with p >= 0.3 * p(4): only 4 and 0 (0.22 / 0.61 = 0.37).
    assert draws(logits, temp=1.0, top_k=0, top_p=1.0, min_p=0.3) == {4, 0}
    assert draws(logits, temp=1.0, top_k=0, top_p=1.0, min_p=0.0, n=2000) == {0, 1, 2, 3, 4}


def test_penalties_follow_llama_cpp_formulas() -> None:
    scores = torch.tensor([2.0, -2.0, 1.0, 1.0])
    history = [0, 1, 0, 3]
    apply_penalties(scores, history, SamplingParams(repeat_penalty=2.0, frequency_penalty=0.5,
                                                    presence_penalty=0.25, last_n_penalty=64))
    # token 0: seen twice: 2/2 - 2*0.5 - 0.25; token 1: -2*2 - 0.5 - 0.25; token 3 once: 1/2 - 0.75.
    assert scores.tolist() == pytest.approx([-0.25, -4.75, 1.0, -0.25])
    windowed = torch.tensor([2.0, -2.0, 1.0, 1.0])
    apply_penalties(windowed, history, SamplingParams(repeat_penalty=2.0, last_n_penalty=1))
    assert windowed.tolist() == [2.0, -2.0, 1.0, 0.5]  # only the last token (3) is in the window


def test_repeat_penalty_changes_greedy_choice() -> None:
    logits = torch.tensor([5.0, 4.0, 0.0])
    sampler = Sampler(SamplingParams(temp=0.0, repeat_penalty=1.5))
    assert sampler.sample(logits, [0]) == 1
    assert sampler.sample(logits, [2]) == 0


@pytest.mark.parametrize("params", [SamplingParams(temp=1.0, repeat_penalty=7.6e-139, seed=1),
                                    SamplingParams(temp=1e-40, seed=1),
                                    SamplingParams(temp=2.2250738585e-313, seed=1),
                                    SamplingParams(temp=1e-40, repeat_penalty=1e-30, top_p=0.5, min_p=0.1, seed=1)],
                         ids=["penalty near 0", "temperature near 0", "temperature 0 in fp32",
                              "both, with top-p and min-p"])
def test_extreme_accepted_values_still_sample(params: SamplingParams) -> None:
    """Found by the serve fuzz test: a positive penalty near 0 overflowed fp32 and multinomial raised."""
    logits = torch.tensor([3.0, 1.0, -2.0, 5.0])
    token = Sampler(params).sample(logits.clone(), history=[0, 1, 2])
    # The repeated positive logits (0, 1) blow up under a penalty near 0 and win; else the best logit (3) wins.
    assert token in ((0, 1) if params.repeat_penalty < 1.0 else (3,))
