"""llama.cpp (llama-cpp-python) as the peer of bench/decode.py and bench/serve.py, direct and as its OpenAI server.

    python bench/llamacpp.py serve --model X.gguf --port 8000 --n_threads 2   # llama_cpp.server's own flags

`KWASI_LLAMA_EXTRA_BUFTS=0` loads models without llama.cpp's extra weight buffers (AMX / repacked layouts):
on Sapphire Rapids llama-cpp-python 0.3.36 built with -march=native crashes in `ggml_backend_amx_mul_mat`
on SmolLM2's Q4_1 weights, so `make bench` builds it without AMX (-mno-amx-int8) instead.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Any


def _without_extra_buffers() -> None:
    import llama_cpp
    import llama_cpp.llama

    default = llama_cpp.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama_model_default_params = params
    # mypy sees llama_cpp's types only where llama-cpp-python is installed (make bench-deps), not in CI.
    llama_cpp.llama.llama_cpp.llama_model_default_params = params  # type: ignore[attr-defined,unused-ignore]


def _configure() -> None:
    if os.environ.get("KWASI_LLAMA_EXTRA_BUFTS", "1") == "0":
        _without_extra_buffers()


def load(gguf: Path, n_ctx: int, threads: int) -> Any:
    """A `llama_cpp.Llama` on `gguf` with `threads` threads for decode and prompt."""
    _configure()
    from llama_cpp import Llama

    return Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)


def server_command(gguf: Path, port: int, threads: int, n_ctx: int = 2048) -> list[str]:
    """llama_cpp.server on loopback; requests queue one after another instead of interrupting each other."""
    return [sys.executable, __file__, "serve", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads),
            "--interrupt_requests", "False", "--verbose", "False"]


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        raise SystemExit(__doc__)
    _configure()
    sys.argv = ["llama_cpp.server", *sys.argv[2:]]
    runpy.run_module("llama_cpp.server", run_name="__main__")
