"""The fused CPU decode kernels of `cpu_kernels.c`: compiled once per machine, loaded with ctypes.

`KWASI_CPU_KERNELS` names a prebuilt library (the runtime image ships one, built by this file run as a script);
otherwise the source is compiled on first use into `<cache>/cpu-kernels/` with `$CC`, `cc`, `gcc` or zig's
(`python -m ziglang cc`), keyed by the source, flags and CPU. With no compiler (or `KWASI_CPU_KERNELS=off`) `load()`
returns None and decode runs eager torch ops (logged once). Only the standard library here: the image builds
the library in a stage without torch.

    python cpu_kernels.py OUT.so   # a portable (x86-64-v3) build, as the image's
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.c")
ENV = "KWASI_CPU_KERNELS"
# -fopenmp-simd: the `omp simd` loops vectorise (reductions included) without linking an OpenMP runtime, which
# would be a second one beside torch's.
FLAGS = ("-O3", "-shared", "-fPIC", "-fopenmp-simd", "-fno-math-errno", "-Wall", "-Werror")
# (zig, portable) -> the CPU flag; portable is x86-64-v3, AVX2 + FMA: any x86 server of the last decade.
MARCH = {(False, False): "-march=native", (False, True): "-march=x86-64-v3",
         (True, False): "-mcpu=native", (True, True): "-mcpu=x86_64_v3"}

P, I64, INT, F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float


@dataclass(frozen=True)
class CpuKernels:
    """The library's entry points (signatures in cpu_kernels.c), arguments typed for ctypes."""

    path: Path
    add_rms_norm: Callable[..., None]
    silu_mul: Callable[..., None]
    rope_attend: Callable[..., int]

    @classmethod
    def open(cls, path: Path) -> CpuKernels:
        lib = ctypes.CDLL(str(path))
        lib.kwasi_add_rms_norm.argtypes = [P, P, INT, P, F32, I64, I64, P, INT]
        lib.kwasi_silu_mul.argtypes = [P, INT, I64, I64, P, INT]
        lib.kwasi_rope_attend.argtypes = [P, INT, I64, P, P, P, P, P, I64, I64, I64, I64, I64, I64, I64, INT, P,
                                          INT]
        lib.kwasi_rope_attend.restype = INT  # 1: a row or position outside the cache, nothing written
        lib.kwasi_add_rms_norm.restype = lib.kwasi_silu_mul.restype = None
        return cls(path, lib.kwasi_add_rms_norm, lib.kwasi_silu_mul, lib.kwasi_rope_attend)


def available_compilers() -> list[list[str]]:
    """C compilers to try, in order."""
    found = [[c] for c in (os.environ.get("CC"), "cc", "gcc") if c and shutil.which(c)]
    if importlib.util.find_spec("ziglang") is not None:
        found.append([sys.executable, "-m", "ziglang", "cc"])
    return found


def build(out: Path, portable: bool = False, compilers: list[list[str]] | None = None) -> None:
    """Compiles the library to `out` with the first compiler that can (atomically: concurrent builders each
    write a temporary file first)."""
    errors = []
    out.parent.mkdir(parents=True, exist_ok=True)
    for cc in available_compilers() if compilers is None else compilers:
        zig = "ziglang" in cc
        # zig compiles for its host unless told; a portable library targets the oldest glibc it supports.
        target = ["-target", "x86_64-linux-gnu"] if portable and zig else []
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            part = Path(tmp) / out.name
            cmd = [*cc, *target, *FLAGS, MARCH[zig, portable], "-o", str(part), str(SOURCE), "-lm"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
            if done.returncode == 0:
                os.replace(part, out)
                return
            errors.append(f"{' '.join(cmd)}: {done.stderr.strip()[-500:]}")
    raise RuntimeError("no C compiler built the CPU kernels: " + ("; ".join(errors) or "none found"))


def cache_dir() -> Path:
    # Imported here: run as a script (the image's build stage) this file has no package around it.
    from kwasi_runtime.cache_home import ENV as CACHE_ENV
    from kwasi_runtime.cache_home import kwasi_cache_home

    env = os.environ.get(CACHE_ENV)
    return (Path(env) if env else kwasi_cache_home()) / "cpu-kernels"


def cpu_features() -> str:
    """What -march=native compiles for: a native build cached in a shared home must not reach another CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return ""


def cached_build() -> Path:
    flags = repr((FLAGS, MARCH[False, False], cpu_features())).encode()
    key = hashlib.sha256(SOURCE.read_bytes() + flags).hexdigest()[:16]
    path = cache_dir() / f"libkwasi_cpu_{key}.so"
    if not path.is_file():
        build(path)
    return path


@functools.cache
def load() -> CpuKernels | None:
    """The kernels, or None (decode then stays eager)."""
    env = os.environ.get(ENV, "")
    if env == "off":
        return None
    try:
        kernels = CpuKernels.open(Path(env) if env else cached_build())
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("fused CPU decode kernels unavailable, decoding with eager torch ops: %s", exc)
        return None
    log.info("fused CPU decode kernels from %s", kernels.path)
    return kernels


if __name__ == "__main__":
    build(Path(sys.argv[1]), portable=True)
