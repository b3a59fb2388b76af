"""Per-guest-run WASI-NN state: the graph and context handle tables and the per-name graph cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kwasi_runtime.nn.abi import Errno, NNError
from kwasi_runtime.nn.backend_api import ExecutionContext, Graph

log = logging.getLogger(__name__)


@dataclass
class _GraphEntry:
    graph: Graph
    name: str | None
    live_contexts: int = 0
    unloaded: bool = False


@dataclass
class NNSession:
    """Handles start at 0 and are never reused within a run, as in WasmEdge master and Wasmtime."""

    graphs: dict[int, _GraphEntry] = field(default_factory=dict)
    contexts: dict[int, tuple[ExecutionContext, _GraphEntry]] = field(default_factory=dict)
    by_name: dict[str, int] = field(default_factory=dict)
    next_graph: int = 0
    next_context: int = 0

    def add_graph(self, graph: Graph, name: str | None = None) -> int:
        handle = self.next_graph
        self.next_graph += 1
        self.graphs[handle] = _GraphEntry(graph, name)
        if name is not None:
            self.by_name[name] = handle
        return handle

    def graph(self, handle: int) -> _GraphEntry:
        entry = self.graphs.get(handle)
        if entry is None:
            raise NNError(Errno.INVALID_ARGUMENT, f"no graph with handle {handle}")
        return entry

    def cached(self, name: str) -> int | None:
        return self.by_name.get(name)

    def add_context(self, graph_handle: int) -> int:
        entry = self.graph(graph_handle)
        ctx = entry.graph.init_execution_context()
        handle = self.next_context
        self.next_context += 1
        self.contexts[handle] = (ctx, entry)
        entry.live_contexts += 1
        return handle

    def context(self, handle: int) -> ExecutionContext:
        found = self.contexts.get(handle)
        if found is None:
            raise NNError(Errno.INVALID_ARGUMENT, f"no execution context with handle {handle}")
        return found[0]

    def unload(self, handle: int) -> None:
        """Drops the handle and the name cache entry; live contexts keep the graph usable until finalized."""
        entry = self.graph(handle)
        del self.graphs[handle]
        if entry.name is not None and self.by_name.get(entry.name) == handle:
            del self.by_name[entry.name]
        entry.unloaded = True
        if entry.live_contexts == 0:
            _close(entry.graph)

    def finalize(self, handle: int) -> None:
        found = self.contexts.pop(handle, None)
        if found is None:
            raise NNError(Errno.INVALID_ARGUMENT, f"no execution context with handle {handle}")
        ctx, entry = found
        _close(ctx)
        entry.live_contexts -= 1
        if entry.unloaded and entry.live_contexts == 0:
            _close(entry.graph)

    def close(self) -> None:
        """End of the guest run: free everything the guest left behind."""
        for handle in list(self.contexts):
            self.finalize(handle)
        for handle in list(self.graphs):
            self.unload(handle)


def _close(obj: Graph | ExecutionContext) -> None:
    try:
        obj.close()
    except Exception:  # a backend failing to free must not take the host down
        log.exception("closing %r failed", obj)
