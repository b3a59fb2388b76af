"""The one small interface every WASI-NN backend implements.

The host (`kwasi_runtime.nn.host`) decodes guest memory into these calls and maps `NNError` to errnos;
backends never see guest pointers.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kwasi_runtime.nn.abi import Errno, ExecutionTarget, NNError, TensorType


@dataclass(frozen=True)
class Tensor:
    dims: tuple[int, ...]
    type: TensorType
    data: bytes


@dataclass(frozen=True)
class KvCacheUsage:
    """What a model's KV cache holds at one moment, in token positions (the unit its memory is sized in)."""

    tokens: int  # positions holding a generating stream's keys and values
    capacity_tokens: int  # positions allocated for streams (slots x context length)
    streams: int  # streams holding a KV slot

    @property
    def ratio(self) -> float:
        return self.tokens / self.capacity_tokens if self.capacity_tokens else 0.0


class ExecutionContext(abc.ABC):
    """Per-`init_execution_context` state. Used by one guest thread at a time."""

    @abc.abstractmethod
    def set_input(self, index: int, tensor: Tensor) -> None: ...

    @abc.abstractmethod
    def compute(self) -> None: ...

    @abc.abstractmethod
    def get_output(self, index: int) -> bytes: ...

    # WasmEdge's streaming extension; backends without it answer InvalidArgument as WasmEdge does.
    def compute_single(self) -> None:
        raise NNError(Errno.INVALID_ARGUMENT, "compute_single is not supported by this backend")

    def get_output_single(self, index: int) -> bytes:
        raise NNError(Errno.INVALID_ARGUMENT, "get_output_single is not supported by this backend")

    def fini_single(self) -> None:
        raise NNError(Errno.INVALID_ARGUMENT, "fini_single is not supported by this backend")

    def close(self) -> None:
        """Frees per-context resources (finalize_execution_context, or the end of a guest run)."""


class Graph(abc.ABC):
    """A loaded model as one guest sees it. Weights may be shared between graphs."""

    @abc.abstractmethod
    def init_execution_context(self) -> ExecutionContext: ...

    def close(self) -> None:
        """Called on `unload` and at the end of a guest run."""


class NamedModel(abc.ABC):
    """A model registered at start-up under a name (`--nn-preload`, `--nn-graph`), shared by every guest."""

    @abc.abstractmethod
    def graph(self, config: bytes | None) -> Graph:
        """A graph for `load_by_name` (config None) or `load_by_name_with_config` (the guest's JSON bytes)."""

    def close(self) -> None:
        """Releases the shared weights at host shutdown."""

    def set_stream_slots(self, n: int) -> None:
        """How many generations may run at once (a server passes its guest concurrency). Backends with fixed
        per-stream state (KV-cache rows) size it from this; others ignore it."""

    def kv_cache_usage(self) -> KvCacheUsage | None:
        """What the KV cache holds now, or None for a backend without one."""
        return None

    def context_length(self) -> int | None:
        """Tokens one generation may hold (prompt + output) by default, or None when unknown."""
        return None


class ModelWrapper(NamedModel):
    """A named model that changes how graphs are made and forwards every declared capability to `inner`."""

    def __init__(self, inner: NamedModel) -> None:
        self.inner = inner

    def graph(self, config: bytes | None) -> Graph:
        return self.inner.graph(config)

    def close(self) -> None:
        self.inner.close()

    def set_stream_slots(self, n: int) -> None:
        self.inner.set_stream_slots(n)

    def kv_cache_usage(self) -> KvCacheUsage | None:
        return self.inner.kv_cache_usage()

    def context_length(self) -> int | None:
        return self.inner.context_length()


class ContextModel(NamedModel, Graph):
    """A named model that is its own graph and makes each context with ``new_context``: for weightless
    token sources (benchmarks, test doubles) that need no config and share nothing between graphs."""

    def __init__(self, new_context: Callable[[], ExecutionContext]) -> None:
        self.new_context = new_context

    def graph(self, config: bytes | None) -> Graph:
        return self

    def init_execution_context(self) -> ExecutionContext:
        return self.new_context()


class Backend(abc.ABC):
    """Turns builders (guest `load`) or files (start-up preloads) into graphs for one family of models."""

    @abc.abstractmethod
    def load(self, builders: Sequence[bytes], target: ExecutionTarget) -> Graph:
        """The guest's `load`: model bytes passed through guest memory."""

    @abc.abstractmethod
    def preload(self, paths: Sequence[Path], target: ExecutionTarget) -> NamedModel:
        """A named model from host files. Raise ValueError for a start-up error naming the bad part."""


class BackendResolver(Protocol):
    """What the host needs to serve a guest's `load`: the backend for a wire encoding number."""

    def for_load(self, encoding: int) -> Backend:
        """The backend for `encoding`; raises NNError(INVALID_ENCODING) when there is none."""
        ...


class NoBackends:
    """A host without backends for `load`: only named models can be used."""

    def for_load(self, encoding: int) -> Backend:
        raise NNError(Errno.INVALID_ENCODING, f"no backend serves graph encoding {encoding} in this host")
