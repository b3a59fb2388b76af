"""Fixtures: a tiny scripted LLM (its greedy output is known exactly) served over NNRPC on a unix socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kwasi_runtime.nnrpc.server.app import NNRpcServer
from kwasi_testing.gguf_models import chain, random_llama_gguf, write_scripted_gguf
from kwasi_testing.nnrpc import preload_host, rpc_server

SCRIPT = b"World"  # the scripted model answers this to a prompt ending in START, then ends the sequence
START = ord("A")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on shared cores
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def scripted_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scripted") / "scripted.gguf"
    write_scripted_gguf(path, chain(START, SCRIPT))
    return path


@pytest.fixture(scope="session")
def random_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("random") / "random.gguf"
    random_llama_gguf(path)
    return path


@pytest.fixture
def server(tmp_path: Path, scripted_gguf: Path, random_gguf: Path) -> Iterator[NNRpcServer]:
    """`default`: the scripted model; `random`: random weights (long, varied streams)."""
    host = preload_host(f"default:GGML:CPU:{scripted_gguf}", f"random:GGML:CPU:{random_gguf}")
    with rpc_server(host, f"unix://{tmp_path}/nn.sock", max_concurrency=4) as s:
        yield s
