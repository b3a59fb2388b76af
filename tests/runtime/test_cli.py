"""`kwasi-runtime run` as a user runs it: a real process, WasmEdge's flag syntax, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kwasi_testing.guests import built_guest, wat_guest
from kwasi_testing.models import TinyModel

EXE = [sys.executable, "-m", "kwasi_runtime.cli", "run"]


def kwasi(*args: str | Path, timeout: float = 120, env: dict[str, str] | None = None,
          cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    extra = ["--cache-dir", str(cache)] if cache else ["--no-cache"]
    return subprocess.run([*EXE, *extra, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=full_env)


@pytest.fixture(scope="module")
def wat_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("wat")
    out = {}
    for name in ("trap", "spin", "env_probe", "tick_spin"):
        out[name] = d / f"{name}.wasm"
        out[name].write_bytes(wat_guest(name))
    return out


def test_classify_with_model_bytes(tiny_model: TinyModel, tmp_path: Path) -> None:
    d = tiny_model.path.parent
    r = kwasi("--dir", f"/data:{d}", built_guest("classify"), "/data/model.pt", "/data/input.f32", "1,3,2,2",
              cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("graph 0\nclasses 5\ntop1 ")
    # second run hits the compiled-module cache and prints the same
    again = kwasi("--dir", f"/data:{d}", built_guest("classify"), "/data/model.pt", "/data/input.f32",
                  "1,3,2,2", cache=tmp_path)
    assert again.stdout == r.stdout
    assert len(list(tmp_path.glob("*.cwasm"))) == 1


def test_nn_preload_and_nn_graph_name_the_same_model(tiny_model: TinyModel, tmp_path: Path) -> None:
    d = tiny_model.path.parent
    preload = kwasi("--nn-preload", f"classifier:PyTorch:cpu:{tiny_model.path}", "--dir", f"/data:{d}",
                    built_guest("classify_named"), "classifier", "/data/input.f32", "1,3,2,2")
    assert preload.returncode == 0, preload.stderr
    graph_dir = tmp_path / "squeeze"
    graph_dir.mkdir()
    (graph_dir / "model.pt").write_bytes(tiny_model.bytes)
    graph = kwasi("--nn-graph", f"pytorch::{graph_dir}", "--dir", f"/data:{d}", built_guest("classify_named"),
                  "squeeze", "/data/input.f32", "1,3,2,2")
    assert graph.returncode == 0, graph.stderr
    assert graph.stdout == preload.stdout


def test_guest_exit_code_and_stderr_pass_through(tmp_path: Path) -> None:
    r = kwasi("--dir", f"/d:{tmp_path}", built_guest("fs_probe"), "read", "/d/missing")
    assert r.returncode == 1
    assert "read /d/missing:" in r.stderr
    assert kwasi(built_guest("fs_probe")).returncode == 2


def test_trap_prints_one_line_and_exits_134(wat_files: dict[str, Path]) -> None:
    r = kwasi(wat_files["trap"])
    assert r.returncode == 134
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == ["kwasi-runtime: trap: unreachable: wasm `unreachable` instruction executed"]


def test_timeout_exits_124_and_stdout_is_live(wat_files: dict[str, Path]) -> None:
    proc = subprocess.Popen([*EXE, "--no-cache", "--timeout", "3", str(wat_files["tick_spin"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    tick = time.monotonic()
    assert line == b"tick\n"
    assert proc.poll() is None, "the tick arrived only after the guest ended"
    assert proc.wait(timeout=30) == 124
    # Timed from the tick, not from the process start (imports alone take ~3 s on a busy 2-core machine): the
    # guest writes at once and then spins for its whole 3 s, so a live stdout shows the tick well before exit.
    assert time.monotonic() - tick > 2
    assert b"deadline exceeded" in proc.stderr.read()


def test_env_is_passed_and_host_env_is_not(wat_files: dict[str, Path]) -> None:
    r = kwasi("--env", "A=1", "--env", "B=x=y", wat_files["env_probe"], env={"HOST_ONLY": "secret"})
    assert r.returncode == 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--nn-preload", "m:tensorflowx:cpu:/x"], "unknown graph encoding 'tensorflowx'"),
        (["--nn-preload", "m:pytorch:xpu:/x"], "unknown execution target 'xpu'"),
        (["--nn-preload", "m:pytorch:cpu"], "expected name:encoding:target:path"),
        (["--nn-preload", "m:pytorch:cpu:/no/such/model.pt"], "cannot read model file '/no/such/model.pt'"),
        (["--nn-preload", "m:onnx:cpu:/x"], "no backend for graph encoding onnx"),
        (["--nn-graph", "pytorch:/x"], "expected encoding::directory"),
        (["--env", "NOEQUALS"], "--env 'NOEQUALS': expected KEY=VALUE"),
        (["--dir", "/g:/no/such/dir"], "host directory '/no/such/dir' does not exist"),
        (["--tensor-types", "v9"], "invalid choice: 'v9'"),
        (["--timeout", "-1"], "must be positive"),
    ],
)
def test_bad_flags_stop_at_startup_naming_the_bad_part(wat_files: dict[str, Path], flags: list[str],
                                                       message: str) -> None:
    r = kwasi(*flags, wat_files["trap"])
    assert r.returncode == 2
    assert message in r.stderr


def test_missing_or_invalid_module(tmp_path: Path) -> None:
    r = kwasi(tmp_path / "nope.wasm")
    assert r.returncode == 2 and "does not exist" in r.stderr
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"\0asm garbage")
    r = kwasi(bad)
    assert r.returncode == 2 and "cannot load" in r.stderr


def test_no_interpreter_exit_noise(wat_files: dict[str, Path]) -> None:
    for _ in range(3):
        r = kwasi(wat_files["env_probe"])
        assert r.returncode == 0
        assert "panicked" not in r.stderr
