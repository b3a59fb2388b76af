"""The fused CPU decode kernels (cpu_kernels.c) against eager torch: kernel by kernel on random shapes, and a
whole decode step of SmolLM2. Logit parity of every architecture feature (RoPE scaling, q/k/v bias, sliding
window) through them is `test_parity.py`'s (its decode steps run here); accuracy on a long text is the gate's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kwasi_runtime.backends.llm import cpu_kernels
from kwasi_runtime.backends.llm.fused_decode import ATTEND_PAIRS
from kwasi_runtime.backends.llm.generation import LoadedModel
from kwasi_runtime.backends.llm.model import KVCache
from kwasi_runtime.backends.llm.rope import apply_rotary, cos_sin_table

BF16_ULP = 2.0**-7  # relative: one unit in the last place of bf16's 8-bit significand


def _portable_builds() -> list[str]:
    """The portable (x86-64-v3) builds to test beside the native one: zig's is the runtime image's."""
    found = cpu_kernels.available_compilers()
    names = []
    if any("ziglang" not in cc for cc in found):
        names.append("portable-cc")
    if any("ziglang" in cc for cc in found):
        names.append("portable-zig")
    return names


@pytest.fixture(scope="module", params=["native", *_portable_builds()])
def kernels(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> cpu_kernels.CpuKernels:
    """Every kernel test runs against each build: the native one this machine loads, and the portable ones."""
    if request.param == "native":
        k = cpu_kernels.load()
        assert k is not None, "the machine has a C compiler: the kernels must build"
        return k
    zig = request.param == "portable-zig"
    compiler = next(cc for cc in cpu_kernels.available_compilers() if ("ziglang" in cc) == zig)
    path = tmp_path_factory.mktemp(request.param) / "libkwasi_cpu.so"
    cpu_kernels.build(path, portable=True, compilers=[compiler])
    return cpu_kernels.CpuKernels.open(path)


def rounded(t: torch.Tensor, bf16: bool) -> torch.Tensor:
    return t.bfloat16() if bf16 else t


def close(got: torch.Tensor, want: torch.Tensor, bf16: bool) -> None:
    # bf16 outputs may differ by one rounding step where the fp32 values before rounding differ in their last bits.
    # Values near zero come out of sums that cancel, where summation order alone moves the last fp32 bits.
    torch.testing.assert_close(got.float(), want.float(), rtol=2 * BF16_ULP if bf16 else 1e-4, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 5), dim=st.integers(1, 300), delta=st.sampled_from([None, "f32", "bf16"]),
       out_bf16=st.booleans(), seed=st.integers(0, 2**16))
def test_add_rms_norm_matches_torch(kernels: cpu_kernels.CpuKernels, rows: int, dim: int, delta: str | None,
                                    out_bf16: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g) * 3
    w = torch.randn(dim, generator=g)
    d = None if delta is None else rounded(torch.randn(rows, dim, generator=g), delta == "bf16")
    out = torch.empty(rows, dim, dtype=torch.bfloat16 if out_bf16 else torch.float32)
    x_after = x + d.float() if d is not None else x.clone()
    want = rounded(F.rms_norm(x_after, (dim,), w, 1e-5), out_bf16)
    kernels.add_rms_norm(x.data_ptr(), 0 if d is None else d.data_ptr(), int(delta == "bf16"), w.data_ptr(), 1e-5,
                         rows, dim, out.data_ptr(), int(out_bf16))
    torch.testing.assert_close(x, x_after)  # the residual stream is updated in place
    close(out, want, out_bf16)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 4), ffn=st.integers(1, 200), in_bf16=st.booleans(), out_bf16=st.booleans(),
       seed=st.integers(0, 2**16))
def test_silu_mul_matches_torch(kernels: cpu_kernels.CpuKernels, rows: int, ffn: int, in_bf16: bool,
                                out_bf16: bool, seed: int) -> None:
    gate_up = rounded(torch.randn(rows, 2 * ffn, generator=torch.Generator().manual_seed(seed)) * 4, in_bf16)
    gate, up = torch.split(gate_up.float(), ffn, dim=-1)
    out = torch.empty(rows, ffn, dtype=torch.bfloat16 if out_bf16 else torch.float32)
    kernels.silu_mul(gate_up.data_ptr(), int(in_bf16), rows, ffn, out.data_ptr(), int(out_bf16))
    close(out, rounded(F.silu(gate) * up, out_bf16), out_bf16)


def eager_rope_attend(qkv: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      keys: torch.Tensor, values: torch.Tensor, slot: int, heads: int, kv_heads: int,
                      window: int) -> torch.Tensor:
    """What model.py's eager path does for one token per row: RoPE, cache writes, masked SDPA; [B, heads*D]."""
    b, head_dim = qkv.shape[0], keys.shape[-1]
    x = qkv.float().view(b, 1, heads + 2 * kv_heads, head_dim).transpose(1, 2)
    qk, v = torch.split(x, [heads + kv_heads, kv_heads], dim=1)
    q, k = torch.split(apply_rotary(qk, cos[pos].view(b, 1, 1, -1), sin[pos].view(b, 1, 1, -1)), [heads, kv_heads], 1)
    rows = torch.arange(slot, slot + b)
    keys[rows, :, pos] = k[:, :, 0]
    values[rows, :, pos] = v[:, :, 0]
    span = int(pos.max()) + 1
    j = torch.arange(span).view(1, -1)
    allowed = j <= pos.view(-1, 1)
    if window:
        allowed &= j > pos.view(-1, 1) - window
    out = F.scaled_dot_product_attention(q, keys[rows, :, :span], values[rows, :, :span],
                                         attn_mask=allowed.view(b, 1, 1, span), enable_gqa=True)
    return out.reshape(b, -1)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 4), kv_heads=st.integers(1, 3), group=st.integers(1, 3),
       head_dim=st.sampled_from([2, 8, 16, 64]), length=st.integers(1, 40), window=st.sampled_from([0, 1, 3, 8]),
       attend=st.booleans(), qkv_bf16=st.booleans(), out_bf16=st.booleans(), data=st.data())
def test_rope_attend_matches_eager(kernels: cpu_kernels.CpuKernels, rows: int, kv_heads: int, group: int,
                                   head_dim: int, length: int, window: int, attend: bool, qkv_bf16: bool,
                                   out_bf16: bool, data: st.DataObject) -> None:
    heads, slots = kv_heads * group, rows + 2
    slot = data.draw(st.integers(0, slots - rows))
    pos = torch.tensor(data.draw(st.lists(st.integers(0, length - 1), min_size=rows, max_size=rows)))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    qkv = rounded(torch.randn(rows, (heads + 2 * kv_heads) * head_dim, generator=g), qkv_bf16)
    cos, sin = cos_sin_table(1.0 / (1e4 ** (torch.arange(0, head_dim, 2).float() / head_dim)), length)
    keys = torch.randn(slots, kv_heads, length, head_dim, generator=g)
    values = torch.randn(slots, kv_heads, length, head_dim, generator=g)
    want_keys, want_values = keys.clone(), values.clone()
    want = eager_rope_attend(qkv, pos, cos, sin, want_keys, want_values, slot, heads, kv_heads, window)
    out_bf16 &= attend  # rotated queries are always fp32
    out = torch.empty(rows, heads * head_dim, dtype=torch.bfloat16 if out_bf16 else torch.float32)
    err = kernels.rope_attend(qkv.data_ptr(), int(qkv_bf16), rows, pos.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                              keys.data_ptr(), values.data_ptr(), slots, slot, heads, kv_heads, head_dim, length,
                              window, int(attend), out.data_ptr(), int(out_bf16))
    assert err == 0
    torch.testing.assert_close(keys, want_keys, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values, want_values, rtol=0, atol=0)
    if attend:
        close(out, rounded(want, out_bf16), out_bf16)
    else:
        x = qkv.float().view(rows, 1, heads + 2 * kv_heads, head_dim).transpose(1, 2)[:, :heads]
        q = apply_rotary(x, cos[pos].view(rows, 1, 1, -1), sin[pos].view(rows, 1, 1, -1))
        torch.testing.assert_close(out.view(rows, heads, head_dim), q[:, :, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("slot, pos", [(-1, 0), (2, 0), (0, -1), (0, 8)])
def test_rope_attend_refuses_rows_outside_the_cache_and_writes_nothing(kernels: cpu_kernels.CpuKernels,
                                                                         slot: int, pos: int) -> None:
    keys, values = torch.zeros(3, 1, 8, 4), torch.zeros(3, 1, 8, 4)
    qkv, positions, out = torch.ones(2, 12), torch.tensor([0, pos]), torch.empty(2, 4)
    cos, sin = torch.ones(8, 4), torch.zeros(8, 4)
    err = kernels.rope_attend(qkv.data_ptr(), 0, 2, positions.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                              keys.data_ptr(), values.data_ptr(), 3, slot, 1, 1, 4, 8, 0, 1, out.data_ptr(), 0)
    assert err == 1
    assert not keys.any() and not values.any()


def test_a_decode_step_past_the_cache_raises_and_leaves_it_unchanged(smollm2: LoadedModel) -> None:
    model = smollm2.model
    assert model.fused is not None
    cache = model.new_cache(2, 16)
    with torch.inference_mode(), pytest.raises(IndexError, match="outside a cache of 2 rows x 16 positions"):
        model(torch.tensor([[5], [6]]), torch.tensor([[3], [16]]), cache, slot=0, kv_len=17)
    assert not any(k.any() for k in cache.keys) and not any(v.any() for v in cache.values)


@pytest.mark.parametrize("positions", [[5, 9, 2], [5, ATTEND_PAIRS, 2]], ids=["kernel attends", "sdpa attends"])
def test_smollm2_decode_step_matches_eager(smollm2: LoadedModel, positions: list[int]) -> None:
    """Three streams at their own positions in one step: logits and cache as the eager ops make them."""
    model = smollm2.model
    fused = model.fused
    assert fused is not None
    caches: list[KVCache] = []
    logits = []
    try:
        for use in (None, fused):
            model.fused = use
            cache = model.new_cache(4, ATTEND_PAIRS + 8)
            with torch.inference_mode():
                for row, n in enumerate(positions):
                    prompt = torch.arange(10, 10 + n).view(1, -1)
                    model(prompt, torch.arange(n).view(1, -1), cache, slot=row + 1, kv_len=n)
                logits.append(model(torch.tensor([[7], [8], [9]]), torch.tensor(positions).view(-1, 1), cache,
                                    slot=1, kv_len=max(positions) + 1)[:, -1])
            caches.append(cache)
    finally:
        model.fused = fused
    eager, got = logits
    assert torch.equal(eager.argmax(-1), got.argmax(-1))
    # bf16 activations: a rounding step apart here and there, never more than noise on logits of magnitude ~20
    assert (eager - got).abs().max().item() < 0.5
    for a, b in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values, strict=True):
        assert (a - b).abs().max().item() <= 0.01 * a.abs().max().item()


def test_without_kernels_decode_runs_eager(smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_kernels.ENV, "off")
    cpu_kernels.load.cache_clear()
    try:
        loaded = LoadedModel.from_path(smollm2_path, "cpu", "int4")
        assert loaded.model.fused is None
        cache = loaded.model.new_cache(1, 4)
        with torch.inference_mode():
            assert loaded.model(torch.tensor([[1]]), torch.tensor([[0]]), cache, kv_len=1).shape[-1] > 0
    finally:
        cpu_kernels.load.cache_clear()


def test_the_image_build_is_among_the_tested_ones() -> None:
    assert "portable-zig" in _portable_builds()  # ziglang is a dev dependency: the image's compiler
