"""End to end: our C classifier guests, compiled to wasm, run a TorchScript model the test made."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from kwasi_runtime.backends.registry import Backends
from kwasi_runtime.backends.torchscript import TorchScriptBackend, TorchScriptGraph
from kwasi_runtime.nn.abi import ExecutionTarget
from kwasi_runtime.nn.host import NNHost
from kwasi_runtime.sandbox import Preopen, Sandbox, WasiSetup
from kwasi_testing.guests import built_guest
from kwasi_testing.models import TinyModel, host_with


def run_classifier(sandbox: Sandbox, model_arg: str, model: TinyModel) -> list[str]:
    out: list[bytes] = []
    err: list[bytes] = []
    result = sandbox.run(
        WasiSetup(
            args=["classify", model_arg, "/data/input.f32", "1,3,2,2"],
            dirs=[Preopen(model.path.parent, "/data")],
            stdout=out.append,
            stderr=err.append,
        )
    )
    assert result.exit_code == 0, (result, b"".join(err))
    return b"".join(out).decode().splitlines()


def expected_top(model: TinyModel) -> list[tuple[int, float]]:
    with torch.no_grad():
        scores = model.module(model.input)[0]
    order = torch.argsort(scores, descending=True)[:3]
    return [(int(i), float(scores[i])) for i in order]


def parse_top(lines: list[str]) -> list[tuple[int, float]]:
    return [(int(ln.split()[1]), float(ln.split()[2])) for ln in lines if ln.startswith("top")]


def test_load_from_bytes_matches_torch(tiny_model: TinyModel) -> None:
    sandbox = Sandbox(built_guest("classify"), NNHost(backends=Backends()), cache_dir=None)
    lines = run_classifier(sandbox, "/data/model.pt", tiny_model)
    assert lines[0] == "graph 0"
    assert "classes 5" in lines
    got = parse_top(lines)
    want = expected_top(tiny_model)
    assert [i for i, _ in got] == [i for i, _ in want]
    assert all(abs(g - w) < 1e-6 for (_, g), (_, w) in zip(got, want, strict=True))


def test_named_model_matches_torch(tiny_model: TinyModel) -> None:
    named = TorchScriptBackend().preload([tiny_model.path], ExecutionTarget.CPU)
    sandbox = Sandbox(built_guest("classify_named"), host_with(classifier=named), cache_dir=None)
    got = parse_top(run_classifier(sandbox, "classifier", tiny_model))
    assert [i for i, _ in got] == [i for i, _ in expected_top(tiny_model)]


def test_unknown_name_is_not_found(tiny_model: TinyModel) -> None:
    sandbox = Sandbox(built_guest("classify_named"), NNHost(backends=Backends()), cache_dir=None)
    err: list[bytes] = []
    result = sandbox.run(
        WasiSetup(args=["c", "nope", "/data/input.f32", "1,3,2,2"], dirs=[Preopen(tiny_model.path.parent, "/data")],
                  stderr=err.append)
    )
    assert result.exit_code == 1
    assert b"load_by_name failed: wasi-nn error 8" in b"".join(err)


def test_wrong_dims_is_invalid_argument(tiny_model: TinyModel) -> None:
    sandbox = Sandbox(built_guest("classify"), NNHost(backends=Backends()), cache_dir=None)
    err: list[bytes] = []
    result = sandbox.run(
        WasiSetup(args=["c", "/data/model.pt", "/data/input.f32", "1,3,2,3"],
                  dirs=[Preopen(tiny_model.path.parent, "/data")], stderr=err.append)
    )
    assert result.exit_code == 1
    assert b"set_input failed: wasi-nn error 1" in b"".join(err)


def test_not_torchscript_bytes_is_invalid_argument(tmp_path: Path, tiny_model: TinyModel) -> None:
    (tmp_path / "model.pt").write_bytes(b"not a zip archive at all")
    (tmp_path / "input.f32").write_bytes(tiny_model.input_path.read_bytes())
    sandbox = Sandbox(built_guest("classify"), NNHost(backends=Backends()), cache_dir=None)
    err: list[bytes] = []
    result = sandbox.run(
        WasiSetup(args=["c", "/data/model.pt", "/data/input.f32", "1,3,2,2"], dirs=[Preopen(tmp_path, "/data")],
                  stderr=err.append)
    )
    assert result.exit_code == 1
    assert b"load failed: wasi-nn error 1" in b"".join(err)


@pytest.mark.cuda
def test_gpu_target_runs_on_cuda(tiny_model: TinyModel) -> None:
    named = TorchScriptBackend().preload([tiny_model.path], ExecutionTarget.GPU)
    graph = named.graph(None)
    assert isinstance(graph, TorchScriptGraph)
    assert graph.device.type == "cuda"
    sandbox = Sandbox(built_guest("classify_named"), host_with(classifier=named), cache_dir=None)
    got = parse_top(run_classifier(sandbox, "classifier", tiny_model))
    assert [i for i, _ in got] == [i for i, _ in expected_top(tiny_model)]


def test_scores_are_float32_le(tiny_model: TinyModel) -> None:
    """The guest reads raw bytes; they must be the model's little-endian f32 scores."""
    named = TorchScriptBackend().preload([tiny_model.path], ExecutionTarget.CPU)
    ctx = named.graph(None).init_execution_context()
    from kwasi_runtime.nn.abi import TensorType
    from kwasi_runtime.nn.backend_api import Tensor

    ctx.set_input(0, Tensor((1, 3, 2, 2), TensorType.F32, tiny_model.input.numpy().tobytes()))
    ctx.compute()
    raw = ctx.get_output(0)
    assert struct.unpack("<5f", raw) == pytest.approx(tiny_model.module(tiny_model.input)[0].tolist())


def test_pytorch_encoding_routes_by_what_the_path_holds(tiny_model: TinyModel, tmp_path: Path) -> None:
    """A TorchScript file goes to the TorchScript backend; a GGUF or an HF directory to the LLM backend."""
    from kwasi_runtime.backends.llm import LlmBackend
    from kwasi_runtime.nn.abi import GraphEncoding

    backends = Backends()
    assert isinstance(backends.for_preload(GraphEncoding.PYTORCH, [tiny_model.path]), TorchScriptBackend)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    assert isinstance(backends.for_preload(GraphEncoding.PYTORCH, [hf_dir]), LlmBackend)
    assert isinstance(backends.for_preload(GraphEncoding.PYTORCH, [tmp_path / "m.gguf"]), LlmBackend)
    assert isinstance(backends.for_preload(GraphEncoding.GGML, [tmp_path / "m.gguf"]), LlmBackend)
    assert backends.for_load(GraphEncoding.GGML) is backends.for_preload(GraphEncoding.GGML, [])
