"""A real Prometheus on loopback for the metrics and dashboard tests.

The binaries come from `hack/cluster/prometheus.sh build` (built once from the Go module proxy into the cluster
cache). Targets are static, with the labels Kubernetes discovery and the operator's relabelling would give them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kwasi_testing import REPO
from kwasi_testing.net import free_port

BUILD = REPO / "hack" / "cluster" / "prometheus.sh"
BUILD_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class Binaries:
    prometheus: Path
    promtool: Path


def binaries() -> Binaries:
    """Builds Prometheus and promtool if the cache lacks them (cold: minutes), then returns their paths."""
    subprocess.run([str(BUILD), "build"], check=True, timeout=BUILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    out = subprocess.run([str(BUILD), "paths"], check=True, capture_output=True, text=True).stdout.split()
    return Binaries(Path(out[0]), Path(out[1]))


@dataclass(frozen=True)
class Target:
    job: str
    address: str  # host:port on 127.0.0.1
    labels: Mapping[str, str] = field(default_factory=dict)
    honor_labels: bool = False


class PrometheusServer:
    """`prometheus` scraping `targets` every `scrape_s` seconds, TSDB in a temporary directory."""

    def __init__(self, binary: Path, targets: Sequence[Target], scrape_s: float = 1.0,
                 rule_files: Sequence[Path] = ()) -> None:
        self.scrape_s = scrape_s
        self.dir = Path(tempfile.mkdtemp(prefix="kwasi-prometheus-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": f"{scrape_s:g}s", "scrape_timeout": f"{scrape_s:g}s",
                       "evaluation_interval": f"{scrape_s:g}s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{
                "job_name": t.job, "honor_labels": t.honor_labels,
                "static_configs": [{"targets": [t.address], "labels": dict(t.labels)}],
            } for t in targets],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (self.dir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [str(binary), f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait(lambda: self._get("/-/ready") is not None, 60, "Prometheus ready")
        except BaseException:
            self.stop()
            raise

    def _get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as resp:
                body = resp.read()
        except OSError:
            return None
        return json.loads(body) if path.startswith("/api/") else body

    def _wait(self, ok: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ok():
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}: {self.log_tail()}")
            time.sleep(0.2)

    def targets_up(self, count: int, timeout_s: float = 60) -> None:
        """Until `count` targets have been scraped successfully."""
        def up() -> bool:
            doc = self._get("/api/v1/targets")
            active: list[dict[str, Any]] = doc["data"]["activeTargets"] if doc else []
            return sum(1 for t in active if t["health"] == "up") >= count
        self._wait(up, timeout_s, f"{count} targets up")

    def wait_scrapes(self, n: int = 2) -> None:
        time.sleep(n * self.scrape_s + 0.2)

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = (self.dir / "prometheus.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
