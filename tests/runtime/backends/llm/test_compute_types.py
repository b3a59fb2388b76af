"""Compute types (`quantize.py`): GGML blocks read as integers, the integer matrices against their dequantized
values, the exact re-scoring of a quantized LM head, and the `compute-type` option through the backend."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kwasi_runtime.backends.llm import LlmBackend
from kwasi_runtime.backends.llm.backend import LlmGraph, LlmNamedModel
from kwasi_runtime.backends.llm.generation import LoadedModel, Stream
from kwasi_runtime.backends.llm.load import load_checkpoint
from kwasi_runtime.backends.llm.model import Block
from kwasi_runtime.backends.llm.options import parse_options
from kwasi_runtime.backends.llm.quantize import (
    COMPUTE_TYPES,
    CPU_KERNEL_MAX_ROWS,
    BlockQuant,
    DenseLinear,
    Int4Linear,
    Int8Linear,
    RescoredHead,
    TokenRows,
    compute_type,
    make_linear,
)
from kwasi_runtime.backends.llm.sampling import SamplingParams
from kwasi_runtime.nn.abi import Errno, ExecutionTarget, NNError
from kwasi_testing.gguf_models import random_llama_gguf, write_gguf

Q = gguf.GGMLQuantizationType
BLOCK_TYPES = [Q.Q8_0, Q.Q4_0, Q.Q4_1]
CPU = torch.device("cpu")


def quantized_matrix(tmp_path: Path, qtype: gguf.GGMLQuantizationType, rows: int, cols: int,
                     seed: int) -> tuple[BlockQuant, np.ndarray]:
    """`rows x cols` random weights written as `qtype` into a tiny GGUF's ffn_down, read back by our loader;
    also gguf-py's own dequantization of the same bytes."""
    rng = np.random.default_rng(seed)
    dim, ffn = rows, cols
    tensors = {
        "token_embd.weight": rng.standard_normal((259, dim), dtype=np.float32),
        "output_norm.weight": np.ones(dim, dtype=np.float32),
        "blk.0.attn_norm.weight": np.ones(dim, dtype=np.float32),
        "blk.0.ffn_norm.weight": np.ones(dim, dtype=np.float32),
        "blk.0.attn_q.weight": rng.standard_normal((dim, dim), dtype=np.float32),
        "blk.0.attn_k.weight": rng.standard_normal((dim, dim), dtype=np.float32),
        "blk.0.attn_v.weight": rng.standard_normal((dim, dim), dtype=np.float32),
        "blk.0.attn_output.weight": rng.standard_normal((dim, dim), dtype=np.float32),
        "blk.0.ffn_gate.weight": rng.standard_normal((ffn, dim), dtype=np.float32),
        "blk.0.ffn_up.weight": rng.standard_normal((ffn, dim), dtype=np.float32),
        "blk.0.ffn_down.weight": rng.standard_normal((dim, ffn), dtype=np.float32) * rng.uniform(0.01, 3),
    }
    hp = {"context_length": 64, "dim": dim, "n_layers": 1, "ffn_dim": ffn, "n_heads": 2, "n_kv_heads": 2,
          "eps": 1e-6, "rope_theta": 1e4}
    path = tmp_path / f"{qtype.name}-{rows}x{cols}-{seed}.gguf"
    write_gguf(path, "llama", hp, tensors, {"blk.0.ffn_down.weight": qtype})
    weight = load_checkpoint(path).tensors["layers.0.w2"]
    assert isinstance(weight, BlockQuant)
    raw = next(t for t in gguf.GGUFReader(path).tensors if t.name == "blk.0.ffn_down.weight")
    return weight, gguf.quants.dequantize(np.asarray(raw.data), raw.tensor_type).reshape(dim, ffn)


@settings(max_examples=12, deadline=None)
@given(qtype=st.sampled_from(BLOCK_TYPES), rows=st.sampled_from([16, 48]), groups=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_gguf_blocks_read_as_integers_dequantize_like_gguf_py(tmp_path_factory: pytest.TempPathFactory,
                                                             qtype: gguf.GGMLQuantizationType, rows: int,
                                                             groups: int, seed: int) -> None:
    weight, expected = quantized_matrix(tmp_path_factory.mktemp("q"), qtype, rows, 32 * groups, seed)
    assert weight.q.dtype == torch.int8 and weight.bits == (8 if qtype == Q.Q8_0 else 4)
    assert np.array_equal(weight.dequantize().numpy(), expected)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1])
def test_int4_keeps_q4_blocks_up_to_bf16_scales(tmp_path: Path, qtype: gguf.GGMLQuantizationType) -> None:
    weight, expected = quantized_matrix(tmp_path, qtype, 48, 96, seed=1)
    linear = make_linear(weight, None, COMPUTE_TYPES["int4"], CPU)
    assert isinstance(linear, Int4Linear)
    dense = linear.dense().float().numpy()
    # Only the bf16 rounding of scale and zero (8 significant bits) separates the two.
    scale = np.abs(expected).max()
    assert np.abs(dense - expected).max() <= scale * 2**-7
    # The kernel (few rows) and the dense path (many rows) compute the same product.
    n = CPU_KERNEL_MAX_ROWS["int4"] + 8
    x = torch.randn(n, 96)
    few = torch.cat([linear(x[i:i + 16]) for i in range(0, n, 16)]).float()
    many = linear(x).float()
    torch.testing.assert_close(few, many, rtol=2e-2, atol=2e-2 * many.abs().max().item())
    torch.testing.assert_close(many, x @ torch.from_numpy(expected).t(), rtol=3e-2,
                               atol=3e-2 * many.abs().max().item())


@pytest.mark.parametrize("k, module", [
    (96, Int8Linear),  # 1 and 3 rows take the int8 kernel, 40 rows the dense path
    (40, DenseLinear),  # torch's CPU int8 kernel sums wrongly (or crashes) unless K % 16 == 0: stays dense
])
def test_int8_matrices_multiply_like_their_dense_values(k: int, module: type[torch.nn.Module]) -> None:
    w = torch.randn(64, k)
    linear = make_linear(w, None, COMPUTE_TYPES["int8"], CPU)
    assert isinstance(linear, module)
    x = torch.randn(40, k)
    reference = x @ w.t()
    tol = 3e-2 * reference.abs().max().item()
    for rows in (1, 3, 40):
        torch.testing.assert_close(linear(x[:rows]).float(), reference[:rows], rtol=3e-2, atol=tol)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_rescored_head_picks_the_fp32_heads_argmax(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(300, 64, generator=gen)
    h = torch.randn(5, 64, generator=gen)
    exact = h @ table.t()
    head = RescoredHead(make_linear(table, None, COMPUTE_TYPES["int8"], CPU, head=True), TokenRows(table, CPU))
    got = head(h)
    assert torch.equal(got.argmax(-1), exact.argmax(-1))
    top = exact.topk(3, dim=-1).indices
    torch.testing.assert_close(got.gather(-1, top), exact.gather(-1, top), rtol=1e-5, atol=1e-5)


def test_token_rows_look_up_block_quantized_embeddings_exactly(tmp_path: Path) -> None:
    weight, expected = quantized_matrix(tmp_path, Q.Q8_0, 16, 64, seed=2)
    rows = TokenRows(weight, CPU)
    tokens = torch.tensor([[3, 0, 15]])
    assert torch.equal(rows(tokens), torch.from_numpy(expected)[tokens])


def test_default_and_named_compute_types() -> None:
    assert compute_type(None, CPU).name == "int4"
    assert compute_type("auto", CPU).name == "int4"
    assert compute_type("", torch.device("cuda")).name == "bf16"
    with pytest.raises(ValueError, match="not offered on cpu"):
        compute_type("bf16", CPU)
    with pytest.raises(ValueError, match="fp8"):
        compute_type("fp8", CPU)


@pytest.fixture(scope="module")
def tiny_named(tmp_path_factory: pytest.TempPathFactory) -> LlmNamedModel:
    path = tmp_path_factory.mktemp("tiny") / "random.gguf"
    random_llama_gguf(path, seed=5)
    named = LlmBackend().preload([path], ExecutionTarget.CPU)
    assert isinstance(named, LlmNamedModel)
    return named


@pytest.mark.parametrize("name, module", [("f32", torch.nn.Linear), ("int8", Int8Linear), ("int4", Int4Linear),
                                          ("auto", Int4Linear)])
def test_compute_type_option_selects_the_matrices(tiny_named: LlmNamedModel, name: str,
                                                 module: type[torch.nn.Module]) -> None:
    graph = tiny_named.graph(json.dumps({"compute-type": name}).encode())
    assert isinstance(graph, LlmGraph)
    block = graph.loaded.model.layers[0]
    assert isinstance(block, Block) and isinstance(block.ffn.w2, module)
    graph.close()


@pytest.mark.parametrize("value", ['"fp8"', '"bf16"', "8"])
def test_bad_compute_type_is_invalid_argument(tiny_named: LlmNamedModel, value: str) -> None:
    with pytest.raises(NNError) as err:
        tiny_named.graph(f'{{"compute-type": {value}}}'.encode())
    assert err.value.errno == Errno.INVALID_ARGUMENT


def test_weights_load_once_per_compute_type(tiny_named: LlmNamedModel) -> None:
    def loaded(name: str) -> LoadedModel:
        return tiny_named.loaded_for(parse_options(json.dumps({"compute-type": name}).encode()))

    a, b = loaded("int8"), loaded("int4")
    assert a is not b and a is loaded("int8")
    assert (a.model.compute.name, b.model.compute.name) == ("int8", "int4")


def test_compiled_decode_gives_the_eager_tokens(tmp_path: Path) -> None:
    """`compile`: the decode step compiled in the background (~1 min here) gives what eager decoding gave, for
    a lone stream and for a batch (one graph each, traced on scratch caches, reused on the real ones)."""
    path = tmp_path / "random.gguf"
    random_llama_gguf(path, seed=3)
    loaded = LoadedModel.from_path(path, "cpu", "f32")
    assert loaded.compile_decode() is None  # the fused decode kernels are faster: compile stands aside
    loaded.model.fused = None  # what `compile` is for: a model the kernels do not take
    loaded.set_slots(4)
    prompts = [[5, 6, 7, 8, 9], [40, 41], [100, 3, 3, 7, 1, 2, 9]]

    def solo(prompt: list[int]) -> list[int]:
        stream = Stream(loaded, 64, SamplingParams(temp=0.0), 4)
        stream.set_prompt(prompt)
        out = [stream.step() for _ in range(12)]
        stream.release()
        return out

    eager = [solo(p) for p in prompts]
    compiled = loaded.compile_decode()
    assert compiled is not None
    assert compiled.ready.wait(600) and compiled.compiled, compiled.error
    assert [solo(p) for p in prompts] == eager
    results: list[list[int]] = [[] for _ in prompts]

    def run(k: int) -> None:
        results[k] = solo(prompts[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == eager
    assert loaded.scheduler(64).stats.max_batch >= 2
