"""Our C guests build deterministically: rebuilding gives byte-identical wasm."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import wasmtime

from kwasi_testing.guests import ROOT, built_guest


def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    cache = str(ROOT / "build" / "zig-cache")
    env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": cache, "ZIG_LOCAL_CACHE_DIR": cache}
    out = tmp_path / "llm_stream.wasm"
    subprocess.run([sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-O2", "-s", "-o", str(out),
                    str(ROOT / "guests" / "llm_stream.c")], check=True, env=env, timeout=300)
    built = built_guest("llm_stream").read_bytes()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(built).hexdigest()


def test_guests_import_only_wasi_and_wasi_nn() -> None:
    engine = wasmtime.Engine()
    for name in ("classify", "classify_named", "llm_stream", "llm_compute", "llm_chat"):
        module = wasmtime.Module(engine, built_guest(name).read_bytes())
        modules = {imp.module for imp in module.imports}
        assert modules <= {"wasi_snapshot_preview1", "wasi_ephemeral_nn"}, (name, modules)
        assert "wasi_ephemeral_nn" in modules
        assert {e.name for e in module.exports} >= {"memory", "_start"}
