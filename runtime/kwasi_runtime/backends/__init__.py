"""Which backend serves which graph encoding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kwasi_runtime.abi import Errno, GraphEncoding, NNError
from kwasi_runtime.backends.base import Backend


@dataclass(frozen=True)
class BackendOptions:
    # WasmEdge's PyTorch backend always returns float32 outputs; Wasmtime returns the native dtype.
    torch_output_f32: bool = False


def _is_llm_path(path: Path) -> bool:
    return path.suffix.lower() == ".gguf" or (path.is_dir() and (path / "config.json").exists())


class Backends:
    """One instance of each backend per host, created on first use, so that `load` shares caches."""

    def __init__(self, options: BackendOptions | None = None) -> None:
        self.options = options or BackendOptions()
        self._instances: dict[str, Backend] = {}
        self._extra: dict[GraphEncoding, Backend] = {}

    def register(self, encoding: GraphEncoding, backend: Backend) -> None:
        """Adds a backend for an encoding (e.g. a no-op backend in benchmarks)."""
        self._extra[encoding] = backend

    def _torchscript(self) -> Backend:
        if "torchscript" not in self._instances:
            from kwasi_runtime.backends.torchscript import TorchScriptBackend

            self._instances["torchscript"] = TorchScriptBackend(output_f32=self.options.torch_output_f32)
        return self._instances["torchscript"]

    def _llm(self) -> Backend:
        if "llm" not in self._instances:
            try:
                from kwasi_runtime.llm import LlmBackend  # type: ignore[attr-defined,unused-ignore]
            except ImportError as e:
                raise LookupError(f"the LLM backend is not available: {e}") from None
            self._instances["llm"] = LlmBackend()
        return self._instances["llm"]

    def for_preload(self, encoding: GraphEncoding, paths: Sequence[Path]) -> Backend:
        """The backend for a named model; raises ValueError naming the encoding when there is none."""
        if encoding in self._extra:
            return self._extra[encoding]
        try:
            if encoding is GraphEncoding.GGML:
                return self._llm()
            if encoding is GraphEncoding.PYTORCH:
                if any(_is_llm_path(p) for p in paths):
                    return self._llm()
                return self._torchscript()
        except LookupError as e:
            raise ValueError(str(e)) from None
        raise ValueError(f"no backend for graph encoding {encoding.name.lower()} in kwasi")

    def for_load(self, encoding: int) -> Backend:
        """The backend for a guest's `load`; InvalidEncoding when the number names none we have."""
        try:
            enc = GraphEncoding(encoding)
        except ValueError:
            raise NNError(Errno.INVALID_ENCODING, f"unknown graph encoding {encoding}") from None
        if enc in self._extra:
            return self._extra[enc]
        try:
            if enc is GraphEncoding.PYTORCH:
                return self._torchscript()
            if enc is GraphEncoding.GGML:
                return self._llm()
        except LookupError as e:
            raise NNError(Errno.INVALID_ENCODING, str(e)) from None
        raise NNError(Errno.INVALID_ENCODING, f"no backend for graph encoding {enc.name.lower()}")
