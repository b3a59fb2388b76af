"""A running guest's output as the server reads it: stdout through a bounded pipe to the request's task, stderr
kept (bounded) for logs and the finish-reason line the chat guest writes."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from kwasi_runtime.serve.metrics import FINISH_REASONS

PIPE_LIMIT_BYTES = 1 << 20  # guest output buffered ahead of a slow client before the guest blocks
STDERR_LIMIT_BYTES = 64 << 10
FINISH_PREFIX = b"kwasi-finish-reason: "


class OutputPipe:
    """Guest stdout (a worker thread) → the request's task, bounded in bytes: a guest that outruns its
    client blocks in its write until the client catches up, instead of growing the server's memory."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = PIPE_LIMIT_BYTES) -> None:
        self._loop = loop
        self._limit = limit
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._buffered = 0
        self._cond = threading.Condition()
        self._reader_gone = False

    def write(self, data: bytes) -> None:  # guest thread (WASI stdout_custom)
        with self._cond:
            while self._buffered > self._limit and not self._reader_gone:
                self._cond.wait(0.1)
            if self._reader_gone:
                return
            self._buffered += len(data)
        self._post(bytes(data))

    def finish(self) -> None:  # guest thread, once the run is over
        self._post(None)

    def _post(self, item: bytes | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed at process exit
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def read(self) -> bytes | None:
        data = await self._queue.get()
        if data:
            with self._cond:
                self._buffered -= len(data)
                self._cond.notify_all()
        return data

    def close_reader(self) -> None:
        with self._cond:
            self._reader_gone = True
            self._cond.notify_all()


class StderrTail:
    """The guest's stderr, kept for logs and the finish-reason line; bounded."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        if len(self.data) < STDERR_LIMIT_BYTES:
            self.data += data[: STDERR_LIMIT_BYTES - len(self.data)]

    def finish_reason(self) -> str | None:
        for line in self.data.splitlines():
            if line.startswith(FINISH_PREFIX):
                reason = line[len(FINISH_PREFIX):].strip().decode("ascii", "replace")
                return reason if reason in FINISH_REASONS else None
        return None
