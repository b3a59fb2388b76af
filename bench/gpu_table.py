"""The one table of bench/gpu_check.sh, from the files its sections leave in a work folder.

    python bench/gpu_table.py WORK_DIR DEVICE_NAME

Reads tests.log (pytest -m cuda), decode.json (bench/decode.py --json), serve.json (bench/serve.py --json) and
gpu_mem.log (nvidia-smi samples, MiB); a missing file leaves its cells at "-". Every target of issue 14 gets a
PASS, FAIL or "not measured" row. Exit status 1 when a target FAILs or the CUDA tests failed, else 0 (so a dry
run without a GPU exits 0).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BF16_TOK_S, VS_TRANSFORMERS, SIXTEEN_VS_ONE = 1000.0, 3.0, 6.0
HEADER = ("what", "measured", "target", "verdict")


@dataclass
class Table:
    rows: list[tuple[str, str, str, str]]
    failed: bool = False

    def add(self, what: str, measured: str, target: str = "", verdict: str = "") -> None:
        self.rows.append((what, measured, target, verdict))

    def target(self, what: str, value: float | None, shown: str, target: str, ok: bool) -> None:
        if value is None:
            self.add(what, "-", target, "not measured")
            return
        self.failed |= not ok
        self.add(what, shown, target, "PASS" if ok else "FAIL")

    def render(self) -> str:
        widths = [max(len(r[i]) for r in [HEADER, *self.rows]) for i in range(4)]
        lines = [HEADER, tuple("-" * w for w in widths), *self.rows]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines)


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _rate(decode: Any, prefix: str) -> float | None:
    rows = decode["rows"] if decode else []
    return next((float(r["tok_s"]) for r in rows if r["name"].startswith(prefix) and r["tok_s"]), None)


def _tok_s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} tok/s"


def tests_summary(log: str) -> tuple[str, bool]:
    """pytest's last summary line, and whether it reports a failure or error."""
    line = next((ln for ln in reversed(log.splitlines()) if re.search(r"\b(passed|failed|skipped|error)", ln)),
                "no result")
    return line.strip("= "), bool(re.search(r"\b\d+ (failed|errors?)\b", line))


def build(work: Path) -> Table:
    table = Table([])
    log = work / "tests.log"
    summary, tests_failed = tests_summary(log.read_text() if log.exists() else "")
    table.add("CUDA-marked tests (pytest -m cuda)", summary, "all pass", "FAIL" if tests_failed else "")
    table.failed |= tests_failed

    decode = _json(work / "decode.json")
    hf = _rate(decode, "transformers")
    bf16 = _rate(decode, "ours, bf16")
    for name, label in (("bf16", "bf16 + CUDA graphs"), ("int8", "int8"), ("int4", "int4")):
        ours = _rate(decode, f"ours, {name}")
        table.add(f"batch-1 decode, {label}", _tok_s(ours), "",
                  f"{ours / hf:.2f}x transformers" if ours and hf else "")
    table.add("batch-1 decode, transformers generate (bf16)", _tok_s(hf))
    table.target("target: batch-1 bf16 tok/s", bf16, _tok_s(bf16), f">= {BF16_TOK_S:,.0f} tok/s",
                 bf16 is not None and bf16 >= BF16_TOK_S)
    ratio = bf16 / hf if bf16 and hf else None
    table.target("target: batch-1 bf16 vs transformers", ratio, f"{ratio or 0:.2f}x", f">= {VS_TRANSFORMERS:g}x",
                 ratio is not None and ratio >= VS_TRANSFORMERS)

    serve = _json(work / "serve.json")
    served = {(r["path"], r["streams"]): float(r["tok_s"]) for r in serve["rows"]} if serve else {}
    for n in (1, 16, 64):
        table.add(f"served, {n} stream{'s' if n > 1 else ''} (HTTP), aggregate", _tok_s(served.get(("kwasi", n))))
    one, sixteen = served.get(("kwasi", 1)), served.get(("kwasi", 16))
    scale = sixteen / one if one and sixteen else None
    table.target("target: 16 streams vs one (HTTP)", scale, f"{scale or 0:.1f}x", f">= {SIXTEEN_VS_ONE:g}x",
                 scale is not None and scale >= SIXTEEN_VS_ONE)

    mem_log = work / "gpu_mem.log"
    samples = [int(x) for x in mem_log.read_text().split() if x.isdigit()] if mem_log.exists() else []
    peak = decode.get("gpu_peak_allocated_mb") if decode else None
    table.add("GPU memory", f"decode peak allocated {peak:.0f} MiB" if peak else "decode -",
              "", f"serve peak used {max(samples)} MiB" if samples else "serve -")
    return table


def main(argv: list[str]) -> int:
    work, device = Path(argv[0]), argv[1]
    table = build(work)
    dry = not (work / "decode.json").exists() and not (work / "serve.json").exists()
    print(f"\nGPU check: {device}" + (" (dry run: nothing measured)" if dry else ""))
    print(table.render())
    return 1 if table.failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
