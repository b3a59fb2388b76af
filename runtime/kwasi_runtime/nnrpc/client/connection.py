"""One client's channel to an NNRPC server: credentials, deadlines, the session, and gRPC failures as errnos.

The first call opens a kwasi session (`kwasi.nnrpc.v1.Session/Open`, a call that lasts as long as the client),
whose id then travels with every call. A server that answers UNIMPLEMENTED is a WasmEdge `wasi_nn_rpcserver`:
the client then speaks only WasmEdge's services, on a channel without keep-alive pings (WasmEdge's gRPC
defaults would answer frequent pings by closing the connection).

A failure without an errno trailer (server unreachable, deadline, connection lost) becomes RUNTIME_ERROR for
the guest, never success, with one log line naming the URI.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from kwasi_runtime.nn.abi import Errno, NNError
from kwasi_runtime.nnrpc import wire
from kwasi_runtime.nnrpc.client.options import ClientOptions
from kwasi_runtime.nnrpc.proto import kwasi_nnrpc_pb2 as kw

log = logging.getLogger(__name__)

KEEPALIVE_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
_REPEAT_LOG_S = 10.0  # the same failure is logged again at most this often


@dataclass(eq=False)
class Session:
    """A server-side session: handles made under it are valid while `alive`."""

    id: str
    models: tuple[str, ...]
    max_window: int
    ended: threading.Event = field(default_factory=threading.Event)
    call: Any = None  # the Open call; cancelling it ends the session

    @property
    def alive(self) -> bool:
        return not self.ended.is_set()

    def check(self, uri: str) -> None:
        if self.ended.is_set():
            raise NNError(Errno.RUNTIME_ERROR, f"the session with {uri} ended (server restarted or unreachable)")


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


class Connection:
    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.uri = options.uri
        token = _read(options.token_file)
        self._auth: tuple[tuple[str, str], ...] = (
            ((wire.AUTH_KEY, f"Bearer {token.decode().strip()}"),) if token else ())
        self._lock = threading.Lock()
        self._channel = self._make_channel(keepalive=True)
        self._kwasi: bool | None = None  # None until the first Open answers; False: a WasmEdge server
        self._session: Session | None = None
        self._closed = False
        self._last_failure: tuple[str, float] = ("", 0.0)

    # --- channel -------------------------------------------------------------------------------------------
    def _make_channel(self, keepalive: bool) -> grpc.Channel:
        o = self.options
        opts: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", o.max_message_bytes),
            ("grpc.max_receive_message_length", o.max_message_bytes),
        ]
        if keepalive:
            opts += [("grpc.keepalive_time_ms", KEEPALIVE_MS), ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                     ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS)]  # gRPC 1.85's ack wait (else 60 s)
        if o.tls_server_name:
            opts.append(("grpc.ssl_target_name_override", o.tls_server_name))
        if not o.tls:
            return grpc.insecure_channel(o.uri, options=opts)
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(o.tls_ca), private_key=_read(o.tls_key), certificate_chain=_read(o.tls_cert))
        return grpc.secure_channel(o.uri, creds, options=opts)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            session, self._session = self._session, None
        if session is not None and session.call is not None:
            session.call.cancel()
        self._channel.close()

    # --- session -------------------------------------------------------------------------------------------
    def session(self) -> Session | None:
        """The live kwasi session (opened on first use, reopened after the server lost it), or None when the
        server is WasmEdge's. Raises NNError(RUNTIME_ERROR) when the server cannot be reached."""
        with self._lock:
            if self._kwasi is False:
                return None
            if self._session is not None and self._session.alive:
                return self._session
            self._session = self._open()
            return self._session

    def _open(self) -> Session | None:
        o = self.options
        call = self._channel.unary_stream(
            wire.OPEN_SESSION.path, request_serializer=kw.OpenRequest.SerializeToString,
            response_deserializer=kw.SessionEvent.FromString,
        )(kw.OpenRequest(client=o.client_name), metadata=self._auth, wait_for_ready=True)
        timer = threading.Timer(o.connect_timeout_s, call.cancel)  # only the first answer has a deadline
        timer.daemon = True
        timer.start()
        try:
            first: kw.SessionEvent = next(call)
        except grpc.RpcError as e:
            timer.cancel()
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.info("%s is a WasmEdge NNRPC server: no sessions, streaming or unload", self.uri)
                self._kwasi = False
                old, self._channel = self._channel, self._make_channel(keepalive=False)
                old.close()
                return None
            if e.code() == grpc.StatusCode.CANCELLED and not self._closed:
                raise self.failure("connect", f"not reachable within {o.connect_timeout_s:g}s") from None
            raise self.error(wire.OPEN_SESSION.name, e) from None
        except StopIteration:
            timer.cancel()
            raise self.failure("connect", "the server ended the session at once") from None
        timer.cancel()
        self._kwasi = True
        session = Session(first.session_id, tuple(first.models), max(1, first.max_window), call=call)
        threading.Thread(target=self._watch, args=(session, call), name="nnrpc-session", daemon=True).start()
        return session

    def _watch(self, session: Session, call: Iterator[kw.SessionEvent]) -> None:
        try:
            for _ in call:
                pass
        except grpc.RpcError as e:
            if not self._closed and e.code() != grpc.StatusCode.CANCELLED:
                self.failure("session", f"{e.code().name}: {e.details()}")
        finally:
            session.ended.set()

    def models(self) -> list[str]:
        """The server's named models (none from a WasmEdge server, which does not list them). Raises ValueError
        when the server cannot be reached within the connect timeout: `serve` cannot start without them."""
        try:
            session = self.session()
        except NNError as e:
            raise ValueError(f"--nn-rpc-uri {self.uri}: cannot list the server's models: {e}") from None
        return list(session.models) if session else []

    # --- calls ---------------------------------------------------------------------------------------------
    def metadata(self, session: Session | None) -> tuple[tuple[str, str], ...]:
        return (*self._auth, (wire.SESSION_KEY, session.id)) if session else self._auth

    def call(self, method: wire.Method[wire.Req, wire.Res], request: wire.Req, session: Session | None) -> wire.Res:
        if session is not None:
            session.check(self.uri)
        stub = self._channel.unary_unary(method.path, request_serializer=_serialize,
                                         response_deserializer=method.response.FromString)
        try:
            response: wire.Res = stub(request, timeout=self.options.timeout_s, metadata=self.metadata(session))
        except grpc.RpcError as e:
            raise self.error(method.name, e) from None
        return response

    def stream(self, method: wire.Method[wire.Req, wire.Res], requests: Iterator[wire.Req],
               session: Session) -> Any:
        """A bidirectional call with the per-call deadline (the caller rotates long streams)."""
        session.check(self.uri)
        stub = self._channel.stream_stream(method.path, request_serializer=_serialize,
                                           response_deserializer=method.response.FromString)
        return stub(requests, timeout=self.options.timeout_s, metadata=self.metadata(session))

    def error(self, what: str, e: grpc.RpcError) -> NNError:
        """The errno the server sent, UNSUPPORTED_OPERATION for a method it lacks, else RUNTIME_ERROR (logged)."""
        errno = wire.errno_from_trailers(e.trailing_metadata())
        if errno is not None:
            return NNError(errno, str(e.details()))
        code = e.code()
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return NNError(Errno.UNSUPPORTED_OPERATION, f"{self.uri} does not implement {what}")
        return self.failure(what, f"{code.name}: {e.details()}")

    def failure(self, what: str, detail: str) -> NNError:
        """RUNTIME_ERROR for the guest, and one log line naming the URI (the same failure again: at most every
        few seconds)."""
        message = f"{self.uri}: {what} failed: {detail}"
        now = time.monotonic()
        last, when = self._last_failure
        if last != detail or now - when > _REPEAT_LOG_S:
            log.error("nnrpc %s", message)
            self._last_failure = (detail, now)
        return NNError(Errno.RUNTIME_ERROR, message)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
