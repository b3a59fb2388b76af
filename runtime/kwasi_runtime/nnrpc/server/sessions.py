"""Who owns which handles on the server: a session per client, freed when the client goes.

A kwasi client opens a session (Session.Open) and sends its id with every call; the session ends with that
call, which gRPC ends when the client closes it, its connection drops, or keep-alive pings go unanswered.
A WasmEdge client sends no id: its calls share one session per peer address (as WasmEdge's server shares
all handles), freed after `idle_s` without a call. Handles are per session, start at 0 and are never
reused within it, so one client can neither see nor touch another's graphs and contexts.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from kwasi_runtime.nn.abi import Errno, ExecutionTarget, NNError
from kwasi_runtime.nn.backend_api import BackendResolver
from kwasi_runtime.nn.handles import NNSession
from kwasi_runtime.nn.models import NamedModels
from kwasi_runtime.nnrpc import wire
from kwasi_runtime.nnrpc.server.served import ServedContext, ServedGraph

log = logging.getLogger(__name__)


class ServerSession:
    def __init__(self, sid: str, peer: str, client: str, anonymous: bool) -> None:
        self.id = sid
        self.peer = peer
        self.client = client
        self.anonymous = anonymous
        self.table = NNSession()
        self.lock = threading.Lock()  # the handle table; backend calls run under each context's own lock
        self.last_used = time.monotonic()
        self.calls = 0  # in flight; an idle anonymous session is one with none for a while
        self.closed = False

    @contextmanager
    def calling(self) -> Iterator[None]:
        with self.lock:
            self.calls += 1
        try:
            yield
        finally:
            with self.lock:
                self.calls -= 1
                self.last_used = time.monotonic()

    def __repr__(self) -> str:
        kind = "anonymous" if self.anonymous else "session"
        return f"<{kind} {self.id[:8]} {self.peer} {self.client!r}>"

    def _live(self) -> None:
        if self.closed:
            raise NNError(Errno.RUNTIME_ERROR, "the session has ended")

    # --- graphs --------------------------------------------------------------------------------------------
    def load_by_name(self, models: NamedModels, name: str, config: bytes | None) -> int:
        """WasmEdge's rule, as the local host: a live graph of the name is handed back, a later config ignored."""
        with self.lock:
            self._live()
            handle = self.table.cached(name)
            if handle is None:
                model = models.get(name)
                if model is None:
                    raise NNError(Errno.NOT_FOUND, f"no model named {name!r}")
                handle = self.table.add_graph(ServedGraph(model.graph(config)), name)
            return handle

    def load(self, backends: BackendResolver, builders: Sequence[bytes], encoding: int, target: int) -> int:
        backend = backends.for_load(encoding)
        try:
            tgt = ExecutionTarget(target)
        except ValueError:
            raise NNError(Errno.INVALID_ARGUMENT, f"unknown execution target {target}") from None
        graph = ServedGraph(backend.load(builders, tgt))
        with self.lock:
            if self.closed:
                graph.close()
                self._live()
            return self.table.add_graph(graph)

    def unload(self, handle: int) -> None:
        with self.lock:
            self._live()
            self.table.unload(handle)

    # --- contexts ------------------------------------------------------------------------------------------
    def init_execution_context(self, graph: int) -> int:
        with self.lock:
            self._live()
            return self.table.add_context(graph)

    def context(self, handle: int) -> ServedContext:
        with self.lock:
            self._live()
            ctx = self.table.context(handle)
        assert isinstance(ctx, ServedContext)
        return ctx

    def finalize(self, handle: int) -> None:
        with self.lock:
            self._live()
            self.table.finalize(handle)

    def close(self) -> None:
        """Frees every context (KV slots) and graph; a call running on a context finishes first."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.table.close()


class Sessions:
    """Every live session of one server."""

    def __init__(self, max_sessions: int, idle_s: float, on_change: Callable[[int], None] | None = None) -> None:
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self._on_change = on_change or (lambda n: None)
        self._lock = threading.Lock()
        self._by_id: dict[str, ServerSession] = {}
        self._anonymous: dict[str, ServerSession] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id) + len(self._anonymous)

    def _add(self, session: ServerSession, table: dict[str, ServerSession], key: str) -> None:
        if len(self._by_id) + len(self._anonymous) >= self.max_sessions:
            raise NNError(Errno.BUSY, f"the server holds its maximum of {self.max_sessions} sessions")
        table[key] = session
        self._on_change(len(self._by_id) + len(self._anonymous))

    def get(self, sid: str) -> ServerSession | None:
        with self._lock:
            return self._by_id.get(sid)

    def open(self, peer: str, client: str) -> ServerSession:
        session = ServerSession(secrets.token_urlsafe(24), peer, client, anonymous=False)
        with self._lock:
            self._add(session, self._by_id, session.id)
        log.info("session opened: %r", session)
        return session

    def resolve(self, metadata: Iterable[tuple[str, str | bytes]], peer: str) -> ServerSession:
        """The session a call belongs to: the one its id names, else the peer's anonymous one."""
        sid = next((v for k, v in metadata if k == wire.SESSION_KEY), None)
        with self._lock:
            if sid is not None:
                session = self._by_id.get(sid if isinstance(sid, str) else sid.decode("ascii", "replace"))
                if session is None:
                    raise NNError(Errno.RUNTIME_ERROR, "unknown or ended session (was the server restarted?)")
            else:
                session = self._anonymous.get(peer)
                if session is None:
                    session = ServerSession(secrets.token_urlsafe(24), peer, "", anonymous=True)
                    self._add(session, self._anonymous, peer)
                    log.info("anonymous session for %s (a client without kwasi sessions)", peer)
            session.last_used = time.monotonic()
            return session

    def end(self, session: ServerSession) -> None:
        with self._lock:
            table = self._anonymous if session.anonymous else self._by_id
            key = session.peer if session.anonymous else session.id
            if table.get(key) is session:
                del table[key]
            self._on_change(len(self._by_id) + len(self._anonymous))
        session.close()
        log.info("session ended: %r", session)

    def reap_idle(self, now: float | None = None) -> int:
        """Ends anonymous sessions idle for `idle_s` (0 keeps them forever); returns how many."""
        if self.idle_s <= 0:
            return 0
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [s for s in self._anonymous.values() if not s.calls and now - s.last_used > self.idle_s]
        for session in idle:
            self.end(session)
        return len(idle)

    def end_all(self) -> None:
        with self._lock:
            sessions = [*self._by_id.values(), *self._anonymous.values()]
        for session in sessions:
            self.end(session)
