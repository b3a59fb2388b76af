"""Compiled modules cached on disk, keyed by wasmtime version, engine config and module sha256."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import wasmtime

from kwasi_runtime.cache_home import ENV, kwasi_cache_home
from kwasi_runtime.wasm.engine import EngineSettings

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    env = os.environ.get(ENV)
    return Path(env) if env else kwasi_cache_home() / "modules"


def cache_key(wasm: bytes, settings: EngineSettings) -> str:
    module_sha = hashlib.sha256(wasm).hexdigest()
    return hashlib.sha256(f"{settings.fingerprint()};module={module_sha}".encode()).hexdigest()


def load_module(
    engine: wasmtime.Engine, wasm: bytes, settings: EngineSettings, cache_dir: Path | None
) -> wasmtime.Module:
    """Compiles `wasm`, or maps its cached `.cwasm`. A cache that cannot be written is skipped, since pods
    run with a read-only root filesystem and may have no cache volume."""
    if cache_dir is None:
        return wasmtime.Module(engine, wasm)
    path = cache_dir / f"{cache_key(wasm, settings)}.cwasm"
    if path.is_file():
        try:
            return wasmtime.Module.deserialize_file(engine, str(path))
        except wasmtime.WasmtimeError as e:
            log.warning("discarding unusable cached module %s: %s", path, e)
            path.unlink(missing_ok=True)
    module = wasmtime.Module(engine, wasm)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(module.serialize())
        os.replace(tmp, path)
    except OSError as e:
        log.info("module cache %s not written: %s", cache_dir, e)
    return module
