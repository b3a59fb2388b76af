"""The gRPC methods: WasmEdge's three services and kwasi's Session, Lifecycle and Generation.

Requests arrive as raw bytes and are parsed here, so a malformed message (bad UTF-8 in a name included) is
INVALID_ARGUMENT with errno 1, like any other bad argument. Every failure is a non-OK status with the wasi-nn
errno in the `errno` trailer (status UNKNOWN, as WasmEdge sends it). No wait inside the server outlasts the
call's deadline or `call_timeout_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError, Message

from kwasi_runtime.nn.abi import Errno, NNError, TensorTypeNumbering
from kwasi_runtime.nn.backend_api import BackendResolver, Tensor
from kwasi_runtime.nn.models import NamedModels
from kwasi_runtime.nnrpc import wire
from kwasi_runtime.nnrpc.proto import kwasi_nnrpc_pb2 as kw
from kwasi_runtime.nnrpc.proto import wasi_ephemeral_nn_pb2 as nn
from kwasi_runtime.nnrpc.server.served import ServedContext, Step
from kwasi_runtime.nnrpc.server.sessions import ServerSession, Sessions
from kwasi_runtime.serve.metrics import RpcMetrics

log = logging.getLogger(__name__)

MAX_WINDOW = 16
_POLL_S = 0.25  # how often a waiting stream looks whether its context, session or call went away
_EMPTY = empty_pb2.Empty()

Handler = Callable[[ServerSession, Any, float], Message]


def _parse(cls: type[wire.Req], raw: bytes) -> wire.Req:
    try:
        return cls.FromString(raw)
    except DecodeError as e:
        raise NNError(Errno.INVALID_ARGUMENT, f"malformed {cls.DESCRIPTOR.name}: {e}") from None


def _empty(fn: Callable[[int], None], handle: int) -> Message:
    fn(handle)
    return _EMPTY


def _abort(context: grpc.ServicerContext, e: NNError) -> NoReturn:
    context.set_trailing_metadata(((wire.ERRNO_KEY, str(int(e.errno))),))
    context.abort(grpc.StatusCode.UNKNOWN, f"errno={int(e.errno)} ({e.errno.name.lower()}): {e}")


class NNRpcServices:
    def __init__(self, models: NamedModels, backends: BackendResolver, numbering: TensorTypeNumbering,
                 sessions: Sessions, metrics: RpcMetrics, call_timeout_s: float) -> None:
        self.models = models
        self.backends = backends
        self.numbering = numbering
        self.sessions = sessions
        self.metrics = metrics
        self.call_timeout_s = call_timeout_s

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        unary: list[tuple[wire.Method[Any, Any], Handler]] = [
            (wire.LOAD_BY_NAME, lambda s, r, b: nn.LoadByNameResult(
                graph_handle=s.load_by_name(self.models, r.name, None))),
            (wire.LOAD_BY_NAME_WITH_CONFIG, lambda s, r, b: nn.LoadByNameWithConfigResult(
                graph_handle=s.load_by_name(self.models, r.name, r.config.encode()))),
            (wire.INIT_EXECUTION_CONTEXT, lambda s, r, b: nn.InitExecutionContextResult(
                ctx_handle=s.init_execution_context(r.resource_handle))),
            (wire.SET_INPUT, self._set_input),
            (wire.COMPUTE, lambda s, r, b: self._on(s, r.resource_handle, b, lambda c: c.compute())),
            (wire.COMPUTE_SINGLE, lambda s, r, b: self._on(s, r.resource_handle, b, lambda c: c.compute_single())),
            (wire.GET_OUTPUT, lambda s, r, b: nn.GetOutputResult(
                data=self._on(s, r.resource_handle, b, lambda c: c.get_output(r.index)))),
            (wire.GET_OUTPUT_SINGLE, lambda s, r, b: nn.GetOutputResult(
                data=self._on(s, r.resource_handle, b, lambda c: c.get_output_single(r.index)))),
            (wire.FINI_SINGLE, lambda s, r, b: self._on(s, r.resource_handle, b, lambda c: c.fini_single())),
            (wire.LOAD, lambda s, r, b: kw.LoadResult(
                graph_handle=s.load(self.backends, list(r.builders), r.encoding, r.target))),
            (wire.UNLOAD, lambda s, r, b: _empty(s.unload, r.graph_handle)),
            (wire.FINALIZE, lambda s, r, b: _empty(s.finalize, r.ctx_handle)),
        ]
        by_service: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
        for method, fn in unary:
            by_service.setdefault(method.service, {})[method.name] = self._unary(method, fn)
        by_service.setdefault(wire.OPEN_SESSION.service, {})[wire.OPEN_SESSION.name] = \
            grpc.unary_stream_rpc_method_handler(self._open)
        by_service.setdefault(wire.GENERATE.service, {})[wire.GENERATE.name] = \
            grpc.stream_stream_rpc_method_handler(self._generate)
        return [grpc.method_handlers_generic_handler(service, methods) for service, methods in by_service.items()]

    # --- plumbing --------------------------------------------------------------------------------------------
    def _budget(self, context: grpc.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.call_timeout_s if remaining is None else min(remaining, self.call_timeout_s)

    def _observe(self, method: str, started: float, code: str) -> None:
        m = self.metrics
        m.calls.labels(method=method).inc()
        m.latency.labels(method=method).observe(time.perf_counter() - started)
        if code and code != "end_of_sequence":
            m.errors.labels(method=method, code=code).inc()

    def _unary(self, method: wire.Method[Any, Any], fn: Handler) -> grpc.RpcMethodHandler[Any, Any]:
        def handle(raw: bytes, context: grpc.ServicerContext) -> bytes:
            started = time.perf_counter()
            code = ""
            try:
                request = _parse(method.request, raw)
                session = self.sessions.resolve(context.invocation_metadata(), context.peer())
                with session.calling():
                    return fn(session, request, self._budget(context)).SerializeToString()
            except NNError as e:
                code = e.errno.name.lower()
                _abort(context, e)
            except Exception:
                log.exception("%s failed inside the server", method.name)
                code = "runtime_error"
                _abort(context, NNError(Errno.RUNTIME_ERROR, "internal error"))
            finally:
                self._observe(method.name, started, code)

        return grpc.unary_unary_rpc_method_handler(handle)

    def _on(self, session: ServerSession, handle: int, budget: float, fn: Callable[[ServedContext], Any]) -> Any:
        """Runs `fn` with the context to itself; a None result is the Empty reply."""
        with session.context(handle).use(budget) as ctx:
            result = fn(ctx)
        return _EMPTY if result is None else result

    def _set_input(self, session: ServerSession, r: nn.SetInputRequest, budget: float) -> Message:
        ty = self.numbering.decode(r.tensor.ty)
        if ty is None:
            raise NNError(Errno.INVALID_ARGUMENT, f"tensor type {r.tensor.ty} is unknown in the "
                                                  f"{self.numbering.value} numbering")
        tensor = Tensor(tuple(r.tensor.dimensions), ty, r.tensor.data)
        result: Message = self._on(session, r.resource_handle, budget, lambda c: c.set_input(r.index, tensor))
        return result

    # --- kwasi.nnrpc.v1.Session/Open -------------------------------------------------------------------------
    def _open(self, raw: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            request = _parse(kw.OpenRequest, raw)
            session = self.sessions.open(context.peer(), request.client)
        except NNError as e:
            _abort(context, e)
        ended = threading.Event()
        if not context.add_callback(ended.set):
            ended.set()
        self.metrics.calls.labels(method=wire.OPEN_SESSION.name).inc()
        try:
            yield kw.SessionEvent(session_id=session.id, models=self.models.names(),
                                  max_window=MAX_WINDOW).SerializeToString()
            while not ended.wait(_POLL_S * 20) and context.is_active():
                pass
        finally:
            self.sessions.end(session)  # the client closed the call, went away, or the server is stopping

    # --- kwasi.nnrpc.v1.Generation/Generate ------------------------------------------------------------------
    def _generate(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        started = time.perf_counter()
        code = ""
        try:
            first = _parse(kw.GenerateRequest, next(requests))
            session = self.sessions.resolve(context.invocation_metadata(), context.peer())
            served = session.context(first.ctx_handle)
            credit = _Credit(served, session)
            if not context.add_callback(credit.cancel):
                credit.cancel()
            threading.Thread(target=credit.read, args=(requests,), name="nnrpc-credit", daemon=True).start()
            window = max(1, min(first.window, MAX_WINDOW))
            with session.calling(), served.use(self._budget(context)) as ctx:
                before = ctx.current_view(first.output_index)
                made: list[Step] = []
                try:
                    while credit.room(len(made), window):
                        step = ctx.step(first.output_index)
                        made.append(step)
                        yield kw.GenerateStep(errno=step.errno, data=step.data).SerializeToString()
                        if step.errno:
                            credit.until_stopped()  # the client's last report says how many it consumed
                            break
                finally:
                    ctx.put_back(made, credit.consumed, before)
        except StopIteration:
            return
        except NNError as e:
            code = e.errno.name.lower()
            _abort(context, e)
        finally:
            self._observe(wire.GENERATE.name, started, code)


class _Credit:
    """The client's side of a Generate call: how many steps it consumed and whether it asked to stop."""

    def __init__(self, ctx: ServedContext, session: ServerSession) -> None:
        self._ctx = ctx
        self._session = session
        self._cond = threading.Condition()
        self.consumed = 0
        self.stopped = False

    def read(self, requests: Iterator[bytes]) -> None:
        try:
            for raw in requests:
                request = _parse(kw.GenerateRequest, raw)
                with self._cond:
                    self.consumed = max(self.consumed, request.consumed)
                    self.stopped = self.stopped or request.stop
                    self._cond.notify_all()
        except (grpc.RpcError, NNError):
            pass  # the call ended or the client sent garbage: either way nothing more will come
        finally:
            self.cancel()

    def cancel(self) -> None:
        with self._cond:
            self.stopped = True
            self._cond.notify_all()

    def _gone(self) -> bool:
        return self.stopped or self._ctx.closed or self._session.closed

    def room(self, made: int, window: int) -> bool:
        """Waits until the client is less than `window` steps behind; False once the stream should end."""
        with self._cond:
            while not self._gone() and made - self.consumed >= window:
                self._cond.wait(_POLL_S)
            return not self._gone()

    def until_stopped(self) -> None:
        with self._cond:
            while not self._gone():
                self._cond.wait(_POLL_S)
