"""No stream is left behind by the scheduler: a request queued while another stream prefills alone is served
without a third request to wake the batch thread, and a waiting stream observes its guest's cancel/deadline."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from kwasi_runtime.backends.llm import LoadedModel, SamplingParams
from kwasi_runtime.backends.llm.generation import Stream
from kwasi_runtime.nn import interrupt
from kwasi_testing.gguf_models import random_llama_file
from kwasi_testing.models import slow_prefill

GREEDY = SamplingParams(temp=0.0)
CTX = 128
CHUNK_DELAY_S = 0.01


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_llama_file(tmp_path_factory, seed=5)


@pytest.fixture
def slow(monkeypatch: pytest.MonkeyPatch) -> None:
    slow_prefill(monkeypatch, CHUNK_DELAY_S)


def test_a_stream_queued_behind_a_lone_prefill_is_served(tiny_path: Path, slow: None) -> None:
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


@pytest.mark.parametrize("stop", ["cancel", "deadline"])
def test_a_waiting_stream_stops_when_its_guest_is_stopped(tiny_path: Path, slow: None, stop: str) -> None:
    loaded = LoadedModel.from_path(tiny_path)
    long_stream = Stream(loaded, CTX, GREEDY, batch_size=1)
    long_stream.set_prompt(list(range(1, 101)))  # a second of prefill
    blocked = Stream(loaded, CTX, GREEDY, batch_size=1)
    blocked.set_prompt(list(range(1, 101)))
    cancel = threading.Event()
    outcome: list[BaseException | int] = []
    bound = time.monotonic() + 10

    def guest() -> None:
        with interrupt.bound(cancel, None if stop == "cancel" else time.monotonic() + 0.2):
            try:
                outcome.append(blocked.step())
            except BaseException as e:
                outcome.append(e)

    first = threading.Thread(target=long_stream.step)
    first.start()
    while not long_stream.holds_slot and time.monotonic() < bound:
        time.sleep(0.001)
    second = threading.Thread(target=guest)
    second.start()
    time.sleep(0.1)
    started = time.monotonic()
    if stop == "cancel":
        cancel.set()  # else the 0.2 s deadline ends it
    second.join(5)
    expected = interrupt.DeadlineExceeded if stop == "deadline" else interrupt.GuestCancelled
    assert outcome and type(outcome[0]) is expected, outcome
    assert time.monotonic() - started < 0.5, "the stop waited for the other stream's prefill"
    blocked.release()
    assert loaded.kv_usage().streams == 1  # only the long stream holds a slot now
    first.join(10)
    long_stream.release()
