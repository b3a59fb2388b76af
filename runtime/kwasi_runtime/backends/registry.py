"""Which backend serves which graph encoding; backends are created on first use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kwasi_runtime.nn.abi import Errno, GraphEncoding, NNError
from kwasi_runtime.nn.backend_api import Backend


@dataclass(frozen=True)
class BackendOptions:
    # WasmEdge's PyTorch backend always returns float32 outputs; Wasmtime returns the native dtype.
    torch_output_f32: bool = False


class Backends:
    """One instance of each backend per host, created on first use (torch and the LLM code load lazily),
    shared by every guest so that `load` caches are shared too."""

    def __init__(self, options: BackendOptions | None = None) -> None:
        self.options = options or BackendOptions()
        self._instances: dict[str, Backend] = {}
        self._extra: dict[GraphEncoding, Backend] = {}

    def register(self, encoding: GraphEncoding, backend: Backend) -> None:
        """Adds a backend for an encoding (e.g. a no-op backend in benchmarks)."""
        self._extra[encoding] = backend

    def _instance(self, kind: str) -> Backend:
        if kind not in self._instances:
            if kind == "llm":
                from kwasi_runtime.backends.llm import LlmBackend

                self._instances[kind] = LlmBackend()
            else:
                from kwasi_runtime.backends.torchscript import TorchScriptBackend

                self._instances[kind] = TorchScriptBackend(output_f32=self.options.torch_output_f32)
        return self._instances[kind]

    def _backend(self, encoding: GraphEncoding, paths: Sequence[Path] = ()) -> Backend | None:
        if encoding in self._extra:
            return self._extra[encoding]
        if encoding is GraphEncoding.GGML:
            return self._instance("llm")
        if encoding is GraphEncoding.PYTORCH:
            from kwasi_runtime.backends.llm.checkpoint import is_llm_path

            # A GGUF or a Hugging Face directory under pytorch is an LLM; a file is a TorchScript archive.
            return self._instance("llm" if any(is_llm_path(p) for p in paths) else "torchscript")
        return None

    def for_preload(self, encoding: GraphEncoding, paths: Sequence[Path]) -> Backend:
        """The backend for a named model; raises ValueError naming the encoding when there is none."""
        backend = self._backend(encoding, paths)
        if backend is None:
            raise ValueError(f"no backend for graph encoding {encoding.name.lower()} in kwasi")
        return backend

    def for_load(self, encoding: int) -> Backend:
        """The backend for a guest's `load`; InvalidEncoding when the number names none we have."""
        try:
            enc = GraphEncoding(encoding)
        except ValueError:
            raise NNError(Errno.INVALID_ENCODING, f"unknown graph encoding {encoding}") from None
        backend = self._backend(enc)
        if backend is None:
            raise NNError(Errno.INVALID_ENCODING, f"no backend for graph encoding {enc.name.lower()}")
        return backend
