"""Where kwasi's caches live by default: `$XDG_CACHE_HOME/kwasi`, else `~/.cache/kwasi` (one folder a kind).

`$KWASI_CACHE_DIR` overrides it per kind: the compiled-module cache is that folder itself, other caches are
folders inside it (pods point it at an emptyDir, their root filesystem being read-only).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "KWASI_CACHE_DIR"


def kwasi_cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kwasi"
