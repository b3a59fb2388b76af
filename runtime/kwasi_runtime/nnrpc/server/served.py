"""Graphs and contexts as the server holds them: one call at a time per context, and Generate's steps ahead.

`Generate` (kwasi_nnrpc.proto) runs compute_single + get_output_single ahead of the client. Each step it makes
records what the context's outputs were right after it (`View`). Steps the client never consumed stay in
`pending`; until they are consumed, compute_single hands them out in order and get_output / get_output_single
answer from the view of the last step the client did consume, so the client sees exactly the sequence a
call per token would have shown it. A new prompt, compute, fini_single or finalize drop what is pending.
Metadata set with set_input(1) while steps are pending applies from the first step made after them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from kwasi_runtime.nn.abi import Errno, NNError
from kwasi_runtime.nn.backend_api import ExecutionContext, Graph, Tensor
from kwasi_runtime.serve import metering

METADATA_INDEX = 1  # WasmEdge GGML: index 1 carries the metadata JSON both ways
METRICS_MODULE = "nnrpc"  # the `module` label of token metrics made for RPC clients
VIEW_INDICES = (0, METADATA_INDEX)  # outputs a view records, besides the stream's own index

Output = bytes | Errno  # an output, or the errno asking for it gave


@dataclass(frozen=True)
class Step:
    errno: int
    data: bytes  # get_output_single(index) after a successful step
    view: dict[tuple[bool, int], Output] = field(default_factory=dict)  # (single?, index) -> output


class ServedGraph(Graph):
    def __init__(self, inner: Graph) -> None:
        self.inner = inner

    def init_execution_context(self) -> ExecutionContext:
        return ServedContext(self.inner.init_execution_context())

    def close(self) -> None:
        self.inner.close()


class ServedContext(ExecutionContext):
    """Callers hold `use()` around every call but `close`."""

    def __init__(self, inner: ExecutionContext) -> None:
        self.inner = inner
        self.closed = False
        self._lock = threading.Lock()
        self.pending: deque[Step] = deque()
        self.view: dict[tuple[bool, int], Output] | None = None  # the client's outputs while steps are pending
        # A prompt starts a "request" for the token metrics (time to first token, inter-token latency).
        self.record: metering.RequestRecord | None = None

    @contextmanager
    def use(self, timeout_s: float) -> Iterator[ServedContext]:
        """Exclusive use for one call, waiting at most `timeout_s` (BUSY after, never forever)."""
        if not self._lock.acquire(timeout=max(0.0, timeout_s)):
            raise NNError(Errno.BUSY, "another call is using this execution context")
        try:
            if self.closed:
                raise NNError(Errno.INVALID_ARGUMENT, "the execution context was finalized")
            metering.bind(self.record)
            yield self
        finally:
            metering.bind(None)
            self._lock.release()

    def _drop_pending(self) -> None:
        self.pending.clear()
        self.view = None

    def _viewed(self, single: bool, index: int) -> Output | None:
        if self.view is None:
            return None
        return self.view.get((single, index))

    # --- the ExecutionContext calls ----------------------------------------------------------------------
    def set_input(self, index: int, tensor: Tensor) -> None:
        if index != METADATA_INDEX:
            self._drop_pending()
            self.record = metering.RequestRecord(time.monotonic(), METRICS_MODULE)
            metering.bind(self.record)
        self.inner.set_input(index, tensor)

    def compute(self) -> None:
        self._drop_pending()
        self.inner.compute()

    def get_output(self, index: int) -> bytes:
        viewed = _value(self._viewed(False, index))
        return self.inner.get_output(index) if viewed is None else viewed

    def compute_single(self) -> None:
        if not self.pending:
            self.inner.compute_single()
            return
        step = self.pending.popleft()
        self.view = step.view if self.pending else None  # nothing left ahead: the backend's state is the client's
        if step.errno:
            raise NNError(_errno(step.errno), "compute_single")

    def get_output_single(self, index: int) -> bytes:
        viewed = _value(self._viewed(True, index))
        return self.inner.get_output_single(index) if viewed is None else viewed

    def fini_single(self) -> None:
        self._drop_pending()
        self.inner.fini_single()

    def close(self) -> None:
        self.closed = True  # a running Generate stops before its next step
        with self._lock:
            self._drop_pending()
            self.inner.close()

    # --- Generate ------------------------------------------------------------------------------------------
    def current_view(self, index: int) -> dict[tuple[bool, int], Output] | None:
        """What the client sees now, to restore if a stream ends before the client consumed anything."""
        return self.view if self.pending else self._capture(index)

    def step(self, index: int) -> Step:
        """The next step: a pending one, or compute_single + get_output_single(index) made now."""
        if self.pending:
            return self.pending.popleft()
        try:
            self.inner.compute_single()
        except NNError as e:
            return Step(int(e.errno), b"", self._capture(index))
        view = self._capture(index)
        data = view[(True, index)]
        return Step(0, data, view) if isinstance(data, bytes) else Step(int(data), b"", view)

    def put_back(self, made: list[Step], consumed: int, before: dict[tuple[bool, int], Output] | None) -> None:
        """End of a stream: the steps after the first `consumed` go back, ahead of anything still pending."""
        consumed = max(0, min(consumed, len(made)))
        self.pending.extendleft(reversed(made[consumed:]))
        if not self.pending:
            self.view = None
        elif consumed:
            self.view = made[consumed - 1].view
        else:
            self.view = before

    def _capture(self, index: int) -> dict[tuple[bool, int], Output]:
        view: dict[tuple[bool, int], Output] = {}
        for i in {index, *VIEW_INDICES}:
            view[(True, i)] = _output(self.inner.get_output_single, i)
            view[(False, i)] = _output(self.inner.get_output, i)
        return view


def _output(get: Callable[[int], bytes], index: int) -> Output:
    try:
        data: bytes = get(index)
    except NNError as e:
        return e.errno
    return data


def _value(output: Output | None) -> bytes | None:
    if isinstance(output, Errno):
        raise NNError(output, "get_output")
    return output


def _errno(code: int) -> Errno:
    try:
        return Errno(code)
    except ValueError:
        return Errno.RUNTIME_ERROR
