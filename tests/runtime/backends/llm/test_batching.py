"""Continuous batching: concurrent streams of one model share decode forwards and still produce their solo output.

Streams run on their own threads, as guests do; each test checks that batching really happened (a decode step
carried more than one stream), so equality with the solo run is not a vacuous pass.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from kwasi_runtime.backends.llm import LlmBackend, LlmGenerator, LoadedModel, SamplingParams
from kwasi_runtime.backends.llm.backend import LlmContext, LlmNamedModel
from kwasi_runtime.backends.llm.generation import Stream
from kwasi_runtime.nn.abi import Errno, ExecutionTarget, NNError, TensorType
from kwasi_runtime.nn.backend_api import Tensor
from kwasi_runtime.sandbox import Limits, Sandbox, WasiSetup
from kwasi_runtime.serve.config import ServeConfig
from kwasi_runtime.serve.metrics import Metrics
from kwasi_runtime.serve.server import Server
from kwasi_testing.gguf_models import random_llama_gguf
from kwasi_testing.guests import built_guest
from kwasi_testing.models import host_with

GREEDY = SamplingParams(temp=0.0)
CTX = 128


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "random.gguf"
    random_llama_gguf(path, seed=3)
    return path


@pytest.fixture
def tiny(tiny_path: Path) -> LoadedModel:
    # fp32: batched rows then sum exactly as solo ones do, so "batched equals solo" can be asserted exactly
    # (bf16 activations round differently per batch shape, as in any batching engine).
    loaded = LoadedModel.from_path(tiny_path, compute="f32")
    loaded.set_slots(8)
    return loaded


def u8(data: bytes) -> Tensor:
    return Tensor((len(data),), TensorType.U8, data)


def solo(loaded: LoadedModel, prompt: Sequence[int], n: int, sampling: SamplingParams = GREEDY,
         batch_size: int = 4) -> list[int]:
    stream = Stream(loaded, CTX, sampling, batch_size)
    stream.set_prompt(prompt)
    out = [stream.step() for _ in range(n)]
    stream.release()
    return out


def concurrently(loaded: LoadedModel, prompts: Sequence[Sequence[int]], n: int, start_after: Sequence[int],
                 samplings: Sequence[SamplingParams] | None = None, batch_size: int = 4,
                 log: list[tuple[int, str]] | None = None) -> list[list[int]]:
    """Stream k starts once the streams before it produced `start_after[k]` tokens in total."""
    results: list[list[int]] = [[] for _ in prompts]
    produced = 0
    cond = threading.Condition()
    errors: list[BaseException] = []

    def run(k: int) -> None:
        nonlocal produced
        try:
            with cond:
                cond.wait_for(lambda: produced >= start_after[k], timeout=30)
            stream = Stream(loaded, CTX, samplings[k] if samplings else GREEDY, batch_size)
            stream.set_prompt(prompts[k])
            if log is not None:
                log.append((k, "start"))
            for _ in range(n):
                token = stream.step()
                results[k].append(token)
                if log is not None:
                    log.append((k, "token"))
                with cond:
                    produced += 1
                    cond.notify_all()
            stream.release()
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)
            with cond:
                produced += 1 << 20  # unblock the others
                cond.notify_all()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


def test_concurrent_greedy_streams_equal_their_solo_runs(tiny: LoadedModel) -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = (3, 9, 17, 30, 5)  # prefill in 1 to 8 chunks of 4
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in lengths]
    expected = [solo(tiny, p, 24) for p in prompts]
    got = concurrently(tiny, prompts, 24, start_after=(0, 0, 5, 12, 30))
    assert got == expected
    sched = tiny.scheduler(CTX)
    assert sched.stats.max_batch >= 3  # really batched, not taken in turns
    assert sched.in_use() == 0


def test_streams_arriving_together_prefill_in_one_forward(tiny: LoadedModel) -> None:
    """Batched prefill: new streams' next chunks go through one padded forward, and each stream still gets
    exactly its solo run (pads sit where a stream writes before it reads)."""
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (7, 13, 18, 25, 2)]
    expected = [solo(tiny, p, 16) for p in prompts]
    stats = tiny.scheduler(CTX).stats
    before = stats.prefill_batches
    got = concurrently(tiny, prompts, 16, start_after=(0, 0, 0, 0, 0))
    assert got == expected
    assert stats.prefill_batches > before


def test_long_prefill_is_chunked_between_decode_steps(tiny: LoadedModel) -> None:
    gen = torch.Generator().manual_seed(1)
    short = [torch.randint(0, 256, (4,), generator=gen).tolist() for _ in range(2)]
    long = torch.randint(0, 256, (60,), generator=gen).tolist()  # 15 chunks of 4
    log: list[tuple[int, str]] = []
    got = concurrently(tiny, [*short, long], 40, start_after=(0, 0, 6), log=log)
    assert got[2] == solo(tiny, long, 40)
    start = log.index((2, "start"))
    first = log.index((2, "token"))
    # While the long prompt was evaluated, chunk by chunk, the running streams kept producing tokens.
    assert sum(1 for k, what in log[start:first] if k != 2 and what == "token") >= 8


def test_seeded_sampling_is_reproducible_under_batching(tiny: LoadedModel) -> None:
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (6, 11, 2)]
    params = [SamplingParams(temp=0.9, top_k=50, top_p=0.95, min_p=0.0, seed=s) for s in (11, 22, 33)]
    expected = [solo(tiny, p, 20, sp) for p, sp in zip(prompts, params, strict=True)]
    got = concurrently(tiny, prompts, 20, start_after=(0, 2, 4), samplings=params)
    assert got == expected
    assert tiny.scheduler(CTX).stats.max_batch >= 2


def test_smollm2_concurrent_chats_equal_solo(smollm2: LoadedModel) -> None:
    engine = LlmGenerator(smollm2)
    questions = ["What is the capital of France?", "Name three colours.",
                 "Write a haiku about the sea, please, in English.", "Why is the sky blue? Answer in one sentence."]
    prompts = [engine.encode_prompt([{"role": "user", "content": q}]) for q in questions]
    assert len({len(p) for p in prompts}) == len(prompts)  # different prompt lengths
    expected = [solo(smollm2, p, 12, batch_size=512) for p in prompts]
    got = concurrently(smollm2, prompts, 12, start_after=(0, 0, 3, 7), batch_size=512)
    assert got == expected
    assert smollm2.scheduler(CTX).stats.max_batch >= 2


# --- slots through the WASI-NN surface ------------------------------------------------------------------------
@pytest.fixture
def named(tiny_path: Path) -> LlmNamedModel:
    model = LlmBackend().preload([tiny_path], ExecutionTarget.CPU)
    assert isinstance(model, LlmNamedModel)
    return model


def started_context(named: LlmNamedModel, **extra: object) -> LlmContext:
    ctx = named.graph(json.dumps({"temp": 0.0, "ctx-size": CTX, "ignore-eos": True, **extra}).encode()) \
        .init_execution_context()
    assert isinstance(ctx, LlmContext)
    ctx.set_input(0, u8(b"hello"))
    ctx.compute_single()
    return ctx


def streams(named: LlmNamedModel) -> int:
    return named.kv_cache_usage().streams


def test_slot_exhaustion_is_busy_and_slots_come_back(named: LlmNamedModel) -> None:
    named.set_stream_slots(2)
    assert streams(named) == 0
    a = started_context(named)
    assert streams(named) == 1
    b = started_context(named)
    assert streams(named) == 2
    with pytest.raises(NNError) as busy:
        started_context(named)
    assert busy.value.errno == Errno.BUSY
    a.fini_single()  # fini_single frees the slot
    assert streams(named) == 1
    c = started_context(named)
    b.close()  # so does close
    c.compute_single()  # the survivor, moved into the freed row, keeps decoding
    assert streams(named) == 1
    del c  # a context dropped without close() gives its slot back too
    assert named.kv_cache_usage().streams == named.kv_cache_usage().tokens == 0


def test_kv_usage_counts_the_tokens_each_stream_holds(named: LlmNamedModel) -> None:
    named.set_stream_slots(2)
    a = started_context(named)  # "hello": 5 byte tokens prefilled, one sampled
    usage = named.kv_cache_usage()
    assert (usage.tokens, usage.capacity_tokens) == (5, 2 * CTX)
    a.compute_single()  # the sampled token is fed: one more position
    b = started_context(named)
    usage = named.kv_cache_usage()
    assert usage.tokens == 5 + 1 + 5
    assert usage.ratio == pytest.approx(11 / (2 * CTX))
    a.close()
    assert named.kv_cache_usage().tokens == 5
    b.close()
    assert named.kv_cache_usage().tokens == 0


def test_end_of_generation_and_compute_free_the_slot(named: LlmNamedModel) -> None:
    ctx = started_context(named, **{"n-predict": 3})
    assert streams(named) == 1
    ctx.compute()
    assert streams(named) == 0
    assert len(ctx.get_output(0)) > 0
    ctx.compute_single()  # continuing after compute re-takes a slot and re-evaluates what was fed
    assert streams(named) == 1
    ctx.close()
    assert streams(named) == 0


def test_compaction_keeps_streams_exact(tiny: LoadedModel) -> None:
    """A stream released first: the highest row moves into its hole and every survivor carries on exactly."""
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (5, 8, 13)]
    expected = [solo(tiny, p, 10) for p in prompts]
    streams = [Stream(tiny, CTX, GREEDY, 4) for _ in prompts]
    got: list[list[int]] = [[] for _ in prompts]
    for s, p in zip(streams, prompts, strict=True):
        s.set_prompt(p)
    for i in range(10):
        for k, s in enumerate(streams):
            if k == 0 and i >= 4:
                continue
            got[k].append(s.step())
        if i == 3:
            row_of_last = streams[2]._slot.index if streams[2]._slot else -1
            streams[0].release()
            # Compaction runs at once, or right after a forward the engine thread may still be finishing.
            deadline = time.monotonic() + 5
            while (streams[2]._slot.index if streams[2]._slot else -1) != 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (row_of_last, streams[2]._slot.index if streams[2]._slot else -1) == (2, 0)
    assert got[1:] == expected[1:]
    assert got[0] == expected[0][:4]


# --- cancellation and the metric -------------------------------------------------------------------------------
def test_cancelled_guest_frees_its_slot(named: LlmNamedModel) -> None:
    sandbox = Sandbox(built_guest("llm_stream"), host_with(default=named), cache_dir=None)
    cancel = threading.Event()
    chunks: list[bytes] = []
    seen_usage: list[int] = []

    def on_chunk(data: bytes) -> None:
        chunks.append(data)
        seen_usage.append(named.kv_cache_usage().tokens)
        if len(chunks) == 3:
            cancel.set()

    config = json.dumps({"temp": 0.0, "ctx-size": CTX, "ignore-eos": True})
    result = sandbox.run(WasiSetup(args=["g", "default", "hello", config], stdout=on_chunk),
                         Limits(timeout_s=30), cancel=cancel)
    assert result.cancelled
    assert max(seen_usage) > 0  # it held a slot while streaming
    assert named.kv_cache_usage().tokens == 0


def test_serve_sizes_slots_and_exports_kv_usage(named: LlmNamedModel) -> None:
    metrics = Metrics()
    Server(ServeConfig(max_concurrency=3, chat_module=None), host_with(default=named), metrics)
    ctx = started_context(named)
    loaded = ctx.loaded
    assert loaded.scheduler(CTX).n_slots == 3  # --max-concurrency streams fit

    def gauges() -> list[float | None]:
        metrics.refresh()
        return [metrics.registry.get_sample_value(f"kwasi_kv_cache_{name}", {"model": "default"})
                for name in ("usage_tokens", "capacity_tokens", "usage_ratio")]

    assert gauges() == pytest.approx([5, 3 * CTX, 5 / (3 * CTX)])  # "hello": 5 tokens held
    ctx.close()
    assert gauges() == [0, 3 * CTX, 0.0]
