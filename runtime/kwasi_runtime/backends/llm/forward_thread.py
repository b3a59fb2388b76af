"""One thread per process runs every LLM forward and model load: the only thread that starts OpenMP teams.

GNU OpenMP keeps a pool of worker threads per *master* (any thread that starts a parallel region) and, as soon
as it manages more threads than there are CPUs, its workers stop spinning between regions and sleep on a
futex (GOMP_SPINCOUNT's throttled count): each small kernel then waits for its workers to wake. On 2 cores a
[1, 576] x [576, 1536] linear took 44 us on the only master and 100-140 us on a second one (bench/README.md),
and serve's guests run on a pool of threads. So forwards are handed to this thread, and the streams' own
threads run their small torch work (sampling) with one intra-op thread (`one_intra_op_thread`), starting no
teams of their own.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class ForwardThread:
    """Runs submitted callables one at a time on one daemon thread with `threads` intra-op threads."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="kwasi-llm-forward", daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[], T]) -> T:
        """fn() on the forward thread (directly when called from it); its exception is re-raised here."""
        if threading.current_thread() is self._thread:
            return fn()
        done: Future[T] = Future()
        self._jobs.put((fn, done))
        return done.result()

    def _serve(self) -> None:
        torch.set_num_threads(self.threads)  # OpenMP's thread count is per thread
        while True:
            fn, done = self._jobs.get()
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed back to the caller, which re-raises it
                done.set_exception(exc)


_lock = threading.Lock()
_shared: ForwardThread | None = None


def forward_thread() -> ForwardThread:
    """The process's forward thread, started on first use with the caller's intra-op thread count."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = ForwardThread(torch.get_num_threads())
        return _shared


def run_forward(fn: Callable[[], T]) -> T:
    return forward_thread().run(fn)


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Torch ops in the block use one thread on this thread: no OpenMP team, so no second pool of workers."""
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
