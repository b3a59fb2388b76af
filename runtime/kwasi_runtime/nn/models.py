"""The name -> model table every guest's `load_by_name` looks into, and per-name default configs.

Models are loaded once at start-up and shared by every guest instance and thread.
"""

from __future__ import annotations

import json
import logging

from kwasi_runtime.nn.backend_api import Graph, ModelWrapper, NamedModel

log = logging.getLogger(__name__)


class ConfiguredModel(ModelWrapper):
    """A named model with default config keys; a guest's own config keys take precedence over them."""

    def __init__(self, model: NamedModel, defaults: dict[str, object]) -> None:
        super().__init__(model)
        self.defaults = defaults

    def graph(self, config: bytes | None) -> Graph:
        merged = dict(self.defaults)
        if config:
            try:
                guest = json.loads(config)
            except ValueError:
                return self.inner.graph(config)  # let the backend report the guest's bad JSON its own way
            if not isinstance(guest, dict):
                return self.inner.graph(config)
            merged.update(guest)
        return self.inner.graph(json.dumps(merged).encode())

    def context_length(self) -> int | None:
        size = self.defaults.get("ctx-size")
        return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 \
            else self.inner.context_length()


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
