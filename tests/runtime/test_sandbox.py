"""The sandbox around each guest run: deadlines, fuel, memory limits, environment, preopens, the module
cache and many threads sharing one graph."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch
import wasmtime

from kwasi_runtime.backends.torchscript import TorchScriptBackend
from kwasi_runtime.nn.abi import ExecutionTarget
from kwasi_runtime.nn.host import NNHost
from kwasi_runtime.sandbox import Limits, Preopen, Sandbox, WasiSetup, parse_dir
from kwasi_runtime.wasm.engine import EngineSettings
from kwasi_runtime.wasm.module_cache import cache_key
from kwasi_testing.guests import built_guest, wat_guest
from kwasi_testing.models import TinyModel, host_with


def test_spinning_guest_is_stopped_by_the_deadline() -> None:
    sandbox = Sandbox(wat_guest("spin"), NNHost(), cache_dir=None)
    start = time.monotonic()
    result = sandbox.run(WasiSetup(), Limits(timeout_s=0.3))
    elapsed = time.monotonic() - start
    assert result.exit_code is None
    assert result.timed_out
    assert 0.25 <= elapsed < 3.0


def test_spinning_guest_runs_out_of_fuel() -> None:
    sandbox = Sandbox(wat_guest("spin"), NNHost(), cache_dir=None, settings=EngineSettings(fuel=True))
    result = sandbox.run(WasiSetup(), Limits(fuel=1_000_000, timeout_s=10))
    assert result.out_of_fuel
    assert result.trap == "fuel exhausted"


def test_trap_reports_a_reason() -> None:
    result = Sandbox(wat_guest("trap"), NNHost(), cache_dir=None).run(WasiSetup())
    assert result.exit_code is None
    assert result.trap_code is wasmtime.TrapCode.UNREACHABLE
    assert result.trap is not None and "unreachable" in result.trap
    assert "\n" not in result.trap


def test_memory_limit_rejects_instantiation() -> None:
    sandbox = Sandbox(wat_guest("big_memory"), NNHost(), cache_dir=None)
    assert sandbox.run(WasiSetup(), Limits(memory_bytes=32 << 20)).exit_code == 0
    result = sandbox.run(WasiSetup(), Limits(memory_bytes=16 << 20))
    assert result.exit_code is None
    assert result.trap is not None and "memory" in result.trap


def test_host_environment_never_leaks() -> None:
    os.environ["KWASI_SECRET_FOR_TEST"] = "x"
    sandbox = Sandbox(wat_guest("env_probe"), NNHost(), cache_dir=None)
    assert sandbox.run(WasiSetup()).exit_code == 0
    assert sandbox.run(WasiSetup(env=[("A", "1"), ("B", "2")])).exit_code == 2


def test_preopens_are_read_only_unless_asked(tmp_path: Path) -> None:
    assert not parse_dir(f"/d:{tmp_path}").writable
    assert parse_dir(f"/d:{tmp_path}:rw").writable
    assert not parse_dir(f"{tmp_path}:readonly").writable
    assert parse_dir(str(tmp_path)).guest == str(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        parse_dir("/d:/no/such/dir")
    with pytest.raises(ValueError, match="expected"):
        parse_dir("a:b:c:d")
    probe = Sandbox(built_guest("fs_probe"), NNHost(), cache_dir=None)

    def run(args: list[str], dirs: list[Preopen]) -> tuple[int | None, bytes]:
        err: list[bytes] = []
        result = probe.run(WasiSetup(args=["fs_probe", *args], dirs=dirs, stderr=err.append))
        return result.exit_code, b"".join(err)

    ro = [Preopen(tmp_path, "/data")]
    rw = [Preopen(tmp_path, "/data", writable=True)]
    (tmp_path / "in.txt").write_text("hello")
    assert run(["read", "/data/in.txt"], ro)[0] == 0
    code, err = run(["write", "/data/out.txt"], ro)
    assert code == 1 and b"write /data/out.txt" in err
    assert not (tmp_path / "out.txt").exists()
    assert run(["write", "/data/out.txt"], rw)[0] == 0
    assert (tmp_path / "out.txt").read_text() == "written by the guest\n"
    # nothing outside a preopen, and no escaping one with ..
    assert run(["read", "/etc/hostname"], ro)[0] == 1
    assert run(["read", "/data/../../etc/hostname"], ro)[0] == 1


def test_module_cache_writes_and_reuses(tmp_path: Path) -> None:
    wasm = wat_guest("trap")
    Sandbox(wasm, NNHost(), cache_dir=tmp_path)
    files = list(tmp_path.glob("*.cwasm"))
    assert [f.name for f in files] == [f"{cache_key(wasm, EngineSettings())}.cwasm"]
    stamp = files[0].stat().st_mtime_ns
    sandbox = Sandbox(wasm, NNHost(), cache_dir=tmp_path)
    assert files[0].stat().st_mtime_ns == stamp  # reused, not rewritten
    assert sandbox.run(WasiSetup()).trap_code is wasmtime.TrapCode.UNREACHABLE
    # a different engine config gets its own entry
    Sandbox(wasm, NNHost(), cache_dir=tmp_path, settings=EngineSettings(fuel=True))
    assert len(list(tmp_path.glob("*.cwasm"))) == 2


def test_corrupt_cache_entry_is_replaced(tmp_path: Path) -> None:
    wasm = wat_guest("trap")
    (tmp_path / f"{cache_key(wasm, EngineSettings())}.cwasm").write_bytes(b"garbage")
    sandbox = Sandbox(wasm, NNHost(), cache_dir=tmp_path)
    assert sandbox.run(WasiSetup()).trap_code is wasmtime.TrapCode.UNREACHABLE


def test_unwritable_cache_is_skipped(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    sandbox = Sandbox(wat_guest("trap"), NNHost(), cache_dir=blocker / "cache")
    assert sandbox.run(WasiSetup()).trap_code is wasmtime.TrapCode.UNREACHABLE


def test_eight_threads_share_one_graph(tiny_model: TinyModel) -> None:
    named = TorchScriptBackend().preload([tiny_model.path], ExecutionTarget.CPU)
    sandbox = Sandbox(built_guest("classify_named"), host_with(classifier=named), cache_dir=None)
    with torch.no_grad():
        best = int(torch.argmax(tiny_model.module(tiny_model.input)[0]))
    outputs: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            for _ in range(5):
                out: list[bytes] = []
                result = sandbox.run(WasiSetup(args=["c", "classifier", "/data/input.f32", "1,3,2,2"],
                                               dirs=[Preopen(tiny_model.path.parent, "/data")],
                                               stdout=out.append))
                assert result.exit_code == 0, result
                with lock:
                    outputs.append(b"".join(out).decode())
        except BaseException as e:  # surfaced below; a thread's assert is otherwise lost
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(outputs) == 40
    assert all(f"top1 {best} " in o for o in outputs)
    assert len(set(outputs)) == 1  # every run saw the same graph and the same handles


def test_timeout_in_one_thread_spares_the_others(tiny_model: TinyModel) -> None:
    spin = Sandbox(wat_guest("spin"), NNHost(), cache_dir=None)
    named = TorchScriptBackend().preload([tiny_model.path], ExecutionTarget.CPU)
    ok = Sandbox(built_guest("classify_named"), host_with(classifier=named), cache_dir=None)
    results: dict[str, object] = {}

    def spinner() -> None:
        results["spin"] = spin.run(WasiSetup(), Limits(timeout_s=0.5))

    t = threading.Thread(target=spinner)
    t.start()
    r = ok.run(WasiSetup(args=["c", "classifier", "/data/input.f32", "1,3,2,2"],
                         dirs=[Preopen(tiny_model.path.parent, "/data")]), Limits(timeout_s=30))
    t.join()
    assert r.exit_code == 0
    assert results["spin"].timed_out  # type: ignore[attr-defined]
