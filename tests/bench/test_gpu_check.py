"""bench/gpu_check.sh without a GPU (a dry run: exits 0, every cell skipped, quickly) and its table's verdicts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def gpu_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_table", ROOT / "bench" / "gpu_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_table"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_dry_run_exits_zero_with_every_cell_skipped() -> None:
    # CUDA_VISIBLE_DEVICES hides any GPU, so this stays a dry run everywhere.
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "DRY RUN" in out and "(dry run: nothing measured)" in out
    assert "decode skipped" in out and "serve skipped" in out
    targets = [line for line in out.splitlines() if line.startswith("target:")]
    assert len(targets) == 3 and all(line.endswith("not measured") for line in targets)
    assert "PASS" not in out and "FAIL" not in out


def write(work: Path, bf16: float, hf: float, one: float, sixteen: float) -> None:
    (work / "tests.log").write_text("... 2 passed in 40.1s\nrc=0\n")
    (work / "decode.json").write_text(json.dumps({"gpu_peak_allocated_mb": 812.5, "rows": [
        {"name": "ours, bf16 (default)", "tok_s": bf16}, {"name": "ours, int8", "tok_s": 900.0},
        {"name": "ours, int4", "tok_s": None}, {"name": "transformers 5 generate", "tok_s": hf}]}))
    (work / "serve.json").write_text(json.dumps({"rows": [
        {"path": "kwasi", "streams": 1, "tok_s": one}, {"path": "kwasi", "streams": 16, "tok_s": sixteen}]}))
    (work / "gpu_mem.log").write_text("500\n1700\n1200\n")


def verdicts(table: object) -> dict[str, str]:
    return {what: verdict for what, _, _, verdict in table.rows if what.startswith("target:")}  # type: ignore[attr-defined]


def test_table_passes_targets_that_are_met(tmp_path: Path) -> None:
    module = gpu_table()
    write(tmp_path, bf16=1500.0, hf=400.0, one=1000.0, sixteen=7000.0)
    table = module.build(tmp_path)
    assert set(verdicts(table).values()) == {"PASS"} and not table.failed
    text = table.render()
    assert "1,500 tok/s" in text and "3.75x transformers" in text and "serve peak used 1700 MiB" in text
    assert module.main([str(tmp_path), "test"]) == 0


def test_table_fails_each_missed_target(tmp_path: Path) -> None:
    module = gpu_table()
    write(tmp_path, bf16=999.0, hf=400.0, one=1000.0, sixteen=5900.0)
    table = module.build(tmp_path)
    assert verdicts(table) == {"target: batch-1 bf16 tok/s": "FAIL", "target: batch-1 bf16 vs transformers": "FAIL",
                               "target: 16 streams vs one (HTTP)": "FAIL"}
    assert module.main([str(tmp_path), "test"]) == 1


def test_failed_cuda_tests_fail_the_check(tmp_path: Path) -> None:
    module = gpu_table()
    write(tmp_path, bf16=1500.0, hf=400.0, one=1000.0, sixteen=7000.0)
    (tmp_path / "tests.log").write_text("1 failed, 1 passed in 30.0s\nrc=1\n")
    assert module.build(tmp_path).failed
