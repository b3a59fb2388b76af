"""compute_single through one Generate call: the server runs a few steps ahead, so a token costs no round trip.

The guest still pulls one step per compute_single. The server makes at most `window` steps beyond what this
client has reported consumed; when the guest does anything else with the context, `finish` reports how far
it got and waits for the call to end, and the server keeps the steps it made beyond that for the context's
next compute_single (see kwasi_nnrpc.proto), so what the guest sees is what a call per token would show.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import grpc

from kwasi_runtime.nn.abi import Errno, NNError
from kwasi_runtime.nnrpc import wire
from kwasi_runtime.nnrpc.client.connection import Connection, Session
from kwasi_runtime.nnrpc.proto import kwasi_nnrpc_pb2 as kw


class TokenStream:
    def __init__(self, conn: Connection, session: Session, ctx_handle: int, index: int, window: int) -> None:
        self.conn = conn
        self.index = index
        self.consumed = 0
        self.started = time.monotonic()
        self.last = b""  # the data of the last consumed step: get_output_single(index) without a call
        self._requests: queue.SimpleQueue[kw.GenerateRequest | None] = queue.SimpleQueue()
        self._requests.put(kw.GenerateRequest(ctx_handle=ctx_handle, output_index=index, window=window))
        self._call: Any = conn.stream(wire.GENERATE, self._outgoing(), session)
        self._open = True

    def _outgoing(self) -> Iterator[kw.GenerateRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.started

    def next(self) -> int:
        """The next step's errno (0: `last` holds its data). A failed call raises NNError and closes the stream."""
        try:
            step: kw.GenerateStep = next(self._call)
        except StopIteration:
            self.close()
            raise self.conn.failure("Generate", "the server ended the stream early") from None
        except grpc.RpcError as e:
            self.close()
            raise self.conn.error(wire.GENERATE.name, e) from None
        self.consumed += 1
        if step.errno == 0:
            self.last = step.data
            self._requests.put(kw.GenerateRequest(consumed=self.consumed))
        return step.errno

    def finish(self) -> None:
        """Reports the consumed count and waits until the server has put the rest back (the call ends)."""
        if not self._open:
            return
        self._requests.put(kw.GenerateRequest(consumed=self.consumed, stop=True))
        self._requests.put(None)
        self._open = False
        try:
            for _ in self._call:
                pass  # steps already on their way; the server keeps them
        except grpc.RpcError as e:
            raise self.conn.error(wire.GENERATE.name, e) from None

    def close(self) -> None:
        """Ends the call without waiting (error paths)."""
        if self._open:
            self._open = False
            self._requests.put(None)
        self._call.cancel()


def errno_of(code: int) -> Errno:
    try:
        return Errno(code)
    except ValueError:
        return Errno.RUNTIME_ERROR


def raise_for(code: int) -> None:
    if code:
        raise NNError(errno_of(code), "compute_single")
