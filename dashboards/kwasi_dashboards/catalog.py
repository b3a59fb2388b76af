"""The dashboards the chart ships and the files they are written to."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from kwasi_dashboards.boards import gpu, instances, operator, overview
from kwasi_dashboards.grafana import Obj

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "charts" / "kwasi-operator" / "dashboards"
DASHBOARDS: dict[str, Callable[[], Obj]] = {
    overview.UID: overview.dashboard,
    instances.UID: instances.dashboard,
    gpu.UID: gpu.dashboard,
    operator.UID: operator.dashboard,
}


def render(uid: str) -> str:
    return json.dumps(DASHBOARDS[uid](), indent=2, ensure_ascii=False) + "\n"


def path(uid: str, out_dir: Path = OUT_DIR) -> Path:
    return out_dir / f"{uid}.json"


def stale(out_dir: Path = OUT_DIR) -> list[str]:
    """Files that differ from the generator's output, are missing, or belong to no dashboard."""
    wrong = [str(path(uid, out_dir)) for uid in DASHBOARDS
             if not path(uid, out_dir).is_file() or path(uid, out_dir).read_text() != render(uid)]
    extra = [str(p) for p in sorted(out_dir.glob("*.json")) if p.stem not in DASHBOARDS]
    return wrong + extra


def write(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for extra in out_dir.glob("*.json"):
        if extra.stem not in DASHBOARDS:
            extra.unlink()
    written = []
    for uid in DASHBOARDS:
        target = path(uid, out_dir)
        target.write_text(render(uid))
        written.append(target)
    return written
