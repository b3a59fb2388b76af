"""Helpers shared by the test suites (runtime, operator, cluster), the benchmarks and the demo's tests:
built and WAT guests (`guests`), small models (`models`), LLM checkpoints written on the fly (`gguf_models`),
a server on a thread (`serving`), loopback ports (`net`)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the repository's root
