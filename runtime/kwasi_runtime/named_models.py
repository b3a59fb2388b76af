"""Named models from `--nn-preload` (WasmEdge syntax) and `--nn-graph` (Wasmtime syntax).

Models are loaded once at start-up and shared by every guest instance and thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kwasi_runtime.abi import ExecutionTarget, GraphEncoding
from kwasi_runtime.backends import Backends
from kwasi_runtime.backends.base import Graph, NamedModel

log = logging.getLogger(__name__)

# WasmEdge re-joins the remaining segments of these encodings into one path (Windows drive letters) and
# reads the file lazily at load time.
_SINGLE_PATH_ENCODINGS = {GraphEncoding.GGML, GraphEncoding.BITNET}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    encoding: GraphEncoding
    target: ExecutionTarget
    paths: tuple[Path, ...]


def parse_nn_preload(value: str) -> ModelSpec:
    """`name:encoding:target:path[:path...]`; raises ValueError naming the bad part."""
    parts = value.split(":")
    if len(parts) < 4 or not all(parts[:4]):
        raise ValueError(
            f"--nn-preload {value!r}: expected name:encoding:target:path[:path...]"
        )
    name, enc, tgt = parts[0], parts[1], parts[2]
    try:
        encoding = GraphEncoding.parse(enc)
    except ValueError as e:
        raise ValueError(f"--nn-preload {value!r}: {e}") from None
    try:
        target = ExecutionTarget.parse(tgt)
    except ValueError as e:
        raise ValueError(f"--nn-preload {value!r}: {e}") from None
    rest = parts[3:]
    paths = (":".join(rest),) if encoding in _SINGLE_PATH_ENCODINGS else tuple(rest)
    if not all(paths):
        raise ValueError(f"--nn-preload {value!r}: empty model path")
    return ModelSpec(name, encoding, target, tuple(Path(p) for p in paths))


def parse_nn_graph(value: str) -> ModelSpec:
    """`encoding::dir`; the name is the directory's last component and Wasmtime loads it on the CPU."""
    enc, sep, directory = value.partition("::")
    if not sep or not enc or not directory:
        raise ValueError(f"--nn-graph {value!r}: expected encoding::directory")
    try:
        encoding = GraphEncoding.parse(enc)
    except ValueError as e:
        raise ValueError(f"--nn-graph {value!r}: {e}") from None
    path = Path(directory)
    name = path.resolve().name if directory.rstrip("/") in {".", ".."} else path.name
    if not name:
        raise ValueError(f"--nn-graph {value!r}: cannot take a model name from {directory!r}")
    if encoding is GraphEncoding.PYTORCH and not (path / "config.json").exists():
        paths: tuple[Path, ...] = (path / "model.pt",)
    else:
        paths = (path,)
    return ModelSpec(name, encoding, ExecutionTarget.CPU, paths)


def parse_nn_config(value: str) -> tuple[str, dict[str, object]]:
    """`name=JSON-object`: default graph config for a named model (the operator's `models[].config`)."""
    name, sep, raw = value.partition("=")
    if not sep or not name:
        raise ValueError(f"--nn-config {value!r}: expected NAME={{json object}}")
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"--nn-config {name!r}: not JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"--nn-config {name!r}: expected a JSON object")
    return name, config


class ConfiguredModel(NamedModel):
    """A named model with default config keys; a guest's own config keys take precedence over them."""

    def __init__(self, model: NamedModel, defaults: dict[str, object]) -> None:
        self.model = model
        self.defaults = defaults

    def graph(self, config: bytes | None) -> Graph:
        merged = dict(self.defaults)
        if config:
            try:
                guest = json.loads(config)
            except ValueError:
                return self.model.graph(config)  # let the backend report the guest's bad JSON its own way
            if not isinstance(guest, dict):
                return self.model.graph(config)
            merged.update(guest)
        return self.model.graph(json.dumps(merged).encode())

    def close(self) -> None:
        self.model.close()

    def __getattr__(self, name: str) -> object:
        # Metering and readiness probes look for backend extras (e.g. kv_cache_usage) on the model.
        return getattr(self.model, name)


class NamedModels:
    """The name → model table every guest's `load_by_name` looks into."""

    def __init__(self) -> None:
        self._models: dict[str, NamedModel] = {}

    def register(self, name: str, model: NamedModel) -> None:
        if name in self._models:
            # WasmEdge keeps the first registration of a name.
            log.warning("model name %r given twice; keeping the first", name)
            return
        self._models[name] = model

    def get(self, name: str) -> NamedModel | None:
        return self._models.get(name)

    def names(self) -> list[str]:
        return list(self._models)

    def close(self) -> None:
        for model in self._models.values():
            model.close()
        self._models.clear()

    @classmethod
    def load(
        cls, specs: Iterable[ModelSpec], backends: Backends, configs: dict[str, dict[str, object]] | None = None
    ) -> NamedModels:
        """Loads every spec; raises ValueError with the model name on a start-up failure."""
        configs = dict(configs or {})
        models = cls()
        for spec in specs:
            if models.get(spec.name) is not None:
                log.warning("model name %r given twice; keeping the first", spec.name)
                continue
            backend = backends.for_preload(spec.encoding, spec.paths)
            try:
                model = backend.preload(spec.paths, spec.target)
            except ValueError as e:
                raise ValueError(f"model {spec.name!r}: {e}") from None
            defaults = configs.pop(spec.name, None)
            models.register(spec.name, ConfiguredModel(model, defaults) if defaults else model)
            log.info("model %r loaded (%s, %s)", spec.name, spec.encoding.name.lower(), spec.target.name.lower())
        if configs:
            raise ValueError(f"--nn-config names no model: {', '.join(sorted(configs))}")
        return models
