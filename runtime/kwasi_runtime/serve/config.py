"""What `kwasi-runtime serve` is configured with (flags → `ServeConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kwasi_runtime.sandbox import Preopen


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    module: Path | None = None
    chat_module: Path | None = None
    max_concurrency: int = 4
    max_queue: int = 64
    timeout_s: float | None = 300.0
    max_body_bytes: int = 4 << 20
    grace_s: float = 30.0
    memory_bytes: int = 1 << 30
    fuel: int | None = None
    env: tuple[tuple[str, str], ...] = ()
    dirs: tuple[Preopen, ...] = ()
    cache_dir: Path | None = None
    # After a failed start-up, how long /metrics stays up (not ready) before the process exits: two scrapes
    # at kube-prometheus-stack's default 30 s interval, so kwasi_model_load_failures_total is seen.
    failure_linger_s: float = 60.0
    api_key: str | None = None  # every route but /healthz, /readyz and /metrics needs `Authorization: Bearer`
    vllm_metrics: bool = False  # also export vLLM's metric names and labels (serve/vllm_metrics.py)
