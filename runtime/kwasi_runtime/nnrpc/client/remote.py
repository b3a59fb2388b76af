"""Models on an NNRPC server behind the host's backend interface: the host's guest-memory checks, handle tables
and output-buffer rules stay where they are (`kwasi_runtime.nn.host`); only the backend calls travel.

The guest sees the host's own handles (0, 1, … per run, as locally); each remote graph or context keeps the
server's handle and the session it belongs to. Graphs of one name are shared between the guest runs of this
process as the server shares them within a session (a live graph is handed back and a later config ignored,
WasmEdge's cache rule), so a graph is unloaded on the server when its last user here closes it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from kwasi_runtime.nn.abi import Errno, ExecutionTarget, NNError
from kwasi_runtime.nn.backend_api import Backend, ExecutionContext, Graph, NamedModel, Tensor
from kwasi_runtime.nn.models import NamedModels
from kwasi_runtime.nnrpc import wire
from kwasi_runtime.nnrpc.client.connection import Connection, Session
from kwasi_runtime.nnrpc.client.stream import TokenStream, raise_for
from kwasi_runtime.nnrpc.proto import kwasi_nnrpc_pb2 as kw
from kwasi_runtime.nnrpc.proto import wasi_ephemeral_nn_pb2 as nn

log = logging.getLogger(__name__)


class RemoteModels(NamedModels):
    """Every name resolves to a remote model; the server answers NOT_FOUND for names it does not have."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn
        self._remote: dict[str, RemoteNamedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> NamedModel | None:
        with self._lock:
            model = self._remote.get(name)
            if model is None:
                model = self._remote[name] = RemoteNamedModel(self.conn, name)
            return model

    def names(self) -> list[str]:
        return self.conn.models()

    def close(self) -> None:
        self.conn.close()


class _SharedGraph:
    """One server graph handle and how many graphs of this process use it."""

    def __init__(self, session: Session | None, handle: int) -> None:
        self.session = session
        self.handle = handle
        self.users = 0


class RemoteNamedModel(NamedModel):
    def __init__(self, conn: Connection, name: str) -> None:
        self.conn = conn
        self.name = name
        self._lock = threading.Lock()  # a load and the unload of the same server handle must not interleave
        self._shared: dict[tuple[str, int], _SharedGraph] = {}

    def graph(self, config: bytes | None) -> Graph:
        session = self.conn.session()
        with self._lock:
            if config is None:
                handle = self.conn.call(wire.LOAD_BY_NAME, nn.LoadByNameRequest(name=self.name), session).graph_handle
            else:
                try:
                    text = config.decode("utf-8")
                except UnicodeDecodeError:
                    raise NNError(Errno.INVALID_ENCODING, "the graph config is not UTF-8") from None
                handle = self.conn.call(wire.LOAD_BY_NAME_WITH_CONFIG,
                                        nn.LoadByNameWithConfigRequest(name=self.name, config=text),
                                        session).graph_handle
            key = (session.id if session else "", handle)
            shared = self._shared.get(key)
            if shared is None:
                shared = self._shared[key] = _SharedGraph(session, handle)
            shared.users += 1
        return RemoteGraph(self.conn, shared, lambda: self._release(key))

    def _release(self, key: tuple[str, int]) -> None:
        with self._lock:
            shared = self._shared[key]
            shared.users -= 1
            if shared.users:
                return
            del self._shared[key]
            unload(self.conn, shared)


def unload(conn: Connection, shared: _SharedGraph) -> None:
    """Frees the graph on the server; a WasmEdge server (no session) cannot, and a lost session already did."""
    if shared.session is None or not shared.session.alive:
        return
    try:
        conn.call(wire.UNLOAD, kw.UnloadRequest(graph_handle=shared.handle), shared.session)
    except NNError as e:
        log.debug("unload of graph %d failed: %s", shared.handle, e)


class RemoteGraph(Graph):
    def __init__(self, conn: Connection, shared: _SharedGraph, release: Callable[[], None] | None = None) -> None:
        self.conn = conn
        self.shared = shared
        self._release = release
        self._closed = False

    def init_execution_context(self) -> ExecutionContext:
        s = self.shared
        result = self.conn.call(wire.INIT_EXECUTION_CONTEXT,
                                nn.InitExecutionContextRequest(resource_handle=s.handle), s.session)
        return RemoteContext(self.conn, s.session, result.ctx_handle)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._release is not None:
            self._release()
        else:
            unload(self.conn, self.shared)


class RemoteContext(ExecutionContext):
    def __init__(self, conn: Connection, session: Session | None, handle: int) -> None:
        self.conn = conn
        self.session = session
        self.handle = handle
        self._stream: TokenStream | None = None
        self._closed = False

    def _call(self, method: wire.Method[wire.Req, wire.Res], request: wire.Req) -> wire.Res:
        self._sync()
        return self.conn.call(method, request, self.session)

    def _sync(self) -> None:
        """Ends a running stream before any other call, so the server state is the guest's again."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.finish()

    def set_input(self, index: int, tensor: Tensor) -> None:
        ty = wire.tensor_type_to_wire(tensor.type)
        if ty is None:
            raise NNError(Errno.INVALID_ARGUMENT, f"tensor type {tensor.type.value} has no NNRPC number")
        size = len(tensor.data) + 4 * len(tensor.dims)
        if size > self.conn.options.max_message_bytes:
            raise NNError(Errno.TOO_LARGE, f"a {size}-byte tensor exceeds the {self.conn.options.max_message_bytes}"
                                           "-byte NNRPC message limit (--nn-rpc-max-message-mib)")
        wire_tensor = nn.Tensor(dimensions=tensor.dims, ty=ty, data=tensor.data)  # type: ignore[arg-type]
        self._call(wire.SET_INPUT, nn.SetInputRequest(resource_handle=self.handle, index=index, tensor=wire_tensor))

    def compute(self) -> None:
        self._call(wire.COMPUTE, nn.ComputeRequest(resource_handle=self.handle))

    def get_output(self, index: int) -> bytes:
        return self._call(wire.GET_OUTPUT, nn.GetOutputRequest(resource_handle=self.handle, index=index)).data

    def compute_single(self) -> None:
        session = self.session
        if session is None or not self.conn.options.stream:
            self._call(wire.COMPUTE_SINGLE, nn.ComputeRequest(resource_handle=self.handle))
            return
        stream = self._stream
        if stream is not None and stream.age_s > self.conn.options.timeout_s / 2:
            self._sync()  # a call has a deadline; a long generation moves to a fresh one (nothing is lost)
            stream = None
        if stream is None:
            window = min(self.conn.options.window, session.max_window)
            stream = self._stream = TokenStream(self.conn, session, self.handle, 0, window)
        try:
            code = stream.next()
        except NNError:
            self._stream = None
            raise
        if code:
            self._sync()
            raise_for(code)

    def get_output_single(self, index: int) -> bytes:
        stream = self._stream
        if stream is not None and index == stream.index:
            return stream.last
        return self._call(wire.GET_OUTPUT_SINGLE, nn.GetOutputRequest(resource_handle=self.handle, index=index)).data

    def fini_single(self) -> None:
        self._call(wire.FINI_SINGLE, nn.FiniSingleRequest(resource_handle=self.handle))

    def close(self) -> None:
        """Frees the context (its KV slot) on the server at once; a WasmEdge server cannot."""
        if self._closed:
            return
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        if self.session is None or not self.session.alive:
            return
        try:
            self.conn.call(wire.FINALIZE, kw.FinalizeRequest(ctx_handle=self.handle), self.session)
        except NNError as e:
            log.debug("finalize of context %d failed: %s", self.handle, e)


class RemoteBackends:
    """The host's `load` (model bytes from the guest) goes to the server's Lifecycle.Load."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def for_load(self, encoding: int) -> Backend:
        return RemoteBackend(self.conn, encoding)


class RemoteBackend(Backend):
    def __init__(self, conn: Connection, encoding: int) -> None:
        self.conn = conn
        self.encoding = encoding

    def load(self, builders: Sequence[bytes], target: ExecutionTarget) -> Graph:
        session = self.conn.session()
        if session is None:
            raise NNError(Errno.UNSUPPORTED_OPERATION, f"{self.conn.uri} (WasmEdge NNRPC) cannot load from bytes")
        size = sum(len(b) for b in builders)
        if size > self.conn.options.max_message_bytes:
            raise NNError(Errno.TOO_LARGE, f"{size} bytes of model exceed the NNRPC message limit "
                                           "(--nn-rpc-max-message-mib)")
        result = self.conn.call(wire.LOAD, kw.LoadRequest(builders=builders, encoding=self.encoding,
                                                          target=int(target)), session)
        shared = _SharedGraph(session, result.graph_handle)
        shared.users = 1
        return RemoteGraph(self.conn, shared)

    def preload(self, paths: Sequence[Path], target: ExecutionTarget) -> NamedModel:
        raise ValueError("with --nn-rpc-uri the models live on the server: give --nn-preload to the server")
