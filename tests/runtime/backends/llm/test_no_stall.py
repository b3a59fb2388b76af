"""No stream is left behind by the scheduler: a request queued while another stream prefills alone is served
without a third request to wake the batch thread, and a waiting stream observes its guest's cancel/deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kwasi_runtime.backends.llm import LoadedModel, SamplingParams
from kwasi_runtime.backends.llm import scheduler as scheduler_module
from kwasi_runtime.backends.llm.generation import Stream
from kwasi_runtime.backends.llm.scheduler import SlotScheduler
from kwasi_runtime.nn import interrupt
from kwasi_testing.gguf_models import random_llama_gguf

GREEDY = SamplingParams(temp=0.0)
CTX = 128
CHUNK_DELAY_S = 0.01


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "random.gguf"
    random_llama_gguf(path, seed=5)
    return path


@pytest.fixture
def slow_prefill(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every prefill chunk takes a while (a long prompt on a slow CPU) and the batch thread gives up quickly."""
    original = SlotScheduler._prefill_chunk

    def slow(self: SlotScheduler, req: object) -> int:
        time.sleep(CHUNK_DELAY_S)
        return original(self, req)  # type: ignore[arg-type]

    monkeypatch.setattr(SlotScheduler, "_prefill_chunk", slow)
    monkeypatch.setattr(scheduler_module, "IDLE_EXIT_S", 0.02)
    yield


def test_a_stream_queued_behind_a_lone_prefill_is_served(tiny_path: Path, slow_prefill: None) -> None:
    loaded = LoadedModel.from_path(tiny_path)
    long_stream = Stream(loaded, CTX, GREEDY, batch_size=1)
    long_stream.set_prompt(list(range(1, 41)))  # 40 chunks of 10 ms, far past the batch thread's idle exit
    short_stream = Stream(loaded, CTX, GREEDY, batch_size=8)
    short_stream.set_prompt([5, 6, 7])
    got: list[int] = []

    def long_request() -> None:
        long_stream.step()  # one token (max_tokens=1), then the guest is done
        long_stream.release()

    first = threading.Thread(target=long_request)
    first.start()
    deadline = time.monotonic() + 10
    while not long_stream.holds_slot and time.monotonic() < deadline:
        time.sleep(0.001)
    second = threading.Thread(target=lambda: got.append(short_stream.step()))
    second.start()
    first.join(10)
    second.join(5)  # before the fix: no batch thread was left to run it, and nothing else came to wake one
    assert got, "the short stream was never served"
    short_stream.release()


def test_a_waiting_stream_stops_when_its_guest_is_cancelled(tiny_path: Path, slow_prefill: None) -> None:
    loaded = LoadedModel.from_path(tiny_path)
    long_stream = Stream(loaded, CTX, GREEDY, batch_size=1)
    long_stream.set_prompt(list(range(1, 101)))  # a second of prefill
    blocked = Stream(loaded, CTX, GREEDY, batch_size=1)
    blocked.set_prompt(list(range(1, 101)))
    cancel = threading.Event()
    outcome: list[BaseException | int] = []

    def guest() -> None:
        with interrupt.bound(cancel, None):
            try:
                outcome.append(blocked.step())
            except BaseException as e:
                outcome.append(e)

    first = threading.Thread(target=long_stream.step)
    first.start()
    while not long_stream.holds_slot:
        time.sleep(0.001)
    second = threading.Thread(target=guest)
    second.start()
    time.sleep(0.1)
    started = time.monotonic()
    cancel.set()
    second.join(5)
    assert outcome and isinstance(outcome[0], interrupt.GuestCancelled)
    assert time.monotonic() - started < 0.5, "the cancel waited for the other stream's prefill"
    blocked.release()
    assert loaded.kv_usage().streams == 1  # only the long stream holds a slot now
    first.join(10)
    long_stream.release()


def test_a_deadline_fires_while_the_stream_waits(tiny_path: Path, slow_prefill: None) -> None:
    loaded = LoadedModel.from_path(tiny_path)
    long_stream = Stream(loaded, CTX, GREEDY, batch_size=1)
    long_stream.set_prompt(list(range(1, 101)))
    blocked = Stream(loaded, CTX, GREEDY, batch_size=1)
    blocked.set_prompt(list(range(1, 101)))
    outcome: list[BaseException | int] = []

    def guest() -> None:
        with interrupt.bound(None, time.monotonic() + 0.2):
            try:
                outcome.append(blocked.step())
            except BaseException as e:
                outcome.append(e)

    first = threading.Thread(target=long_stream.step)
    first.start()
    while not long_stream.holds_slot:
        time.sleep(0.001)
    second = threading.Thread(target=guest)
    second.start()
    second.join(5)
    assert outcome and isinstance(outcome[0], interrupt.DeadlineExceeded)
    blocked.release()
    first.join(10)
    long_stream.release()
