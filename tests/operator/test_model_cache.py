"""The model cache's init containers, run for real: two replicas starting together on one node (two
processes on one directory) download a model once; a restart downloads nothing.

The command is the one the operator renders, with the cache volume's mount path mapped onto a temporary
directory and `kwasi-runtime` onto this environment's console script; flock comes from util-linux, as in the
runtime image (python:3.11-slim).
"""

from __future__ import annotations

import hashlib
import http.server
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kwasi_operator.render import deployment
from kwasi_operator.render.volumes import CACHE_DIR
from kwasi_operator.spec import Spec

BLOB = b"GGUF" + bytes(range(256)) * 4096  # 1 MiB of "model"


class Counting(http.server.BaseHTTPRequestHandler):
    downloads = 0

    def do_GET(self) -> None:
        type(self).downloads += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB)))
        self.end_headers()
        for i in range(0, len(BLOB), 64 << 10):  # slowly: the second replica starts while the first downloads
            self.wfile.write(BLOB[i:i + (64 << 10)])
            time.sleep(0.02)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Counting.downloads = 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/models/smollm2.gguf"
    finally:
        httpd.shutdown()


def init_command(url: str, cache: Path) -> list[str]:
    sha = hashlib.sha256(BLOB).hexdigest()
    spec = Spec.parse({"module": {"image": "r/app:1"}, "replicas": 2, "modelCache": {"size": "1Gi"},
                       "models": [{"name": "m", "encoding": "ggml", "source": {"url": url, "sha256": sha}}]})
    [init] = deployment("app", "ns", spec)["spec"]["template"]["spec"]["initContainers"]
    runtime = shutil.which("kwasi-runtime", path=str(Path(sys.executable).parent))
    assert runtime is not None
    cmd = [runtime if part == "kwasi-runtime" else part for part in [*init["command"], *init["args"]]]
    return [part.replace(CACHE_DIR, str(cache)) for part in cmd]


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock (util-linux) is not installed")
def test_replicas_starting_together_download_once(server: str, tmp_path: Path) -> None:
    cmd = init_command(server, tmp_path)
    replicas = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in replicas:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert Counting.downloads == 1
    [cached] = tmp_path.glob("*/smollm2.gguf")
    assert cached.read_bytes() == BLOB and cached.parent.name == hashlib.sha256(BLOB).hexdigest()
    # A pod restarted later, or a third replica on the node: the file is there and verified, nothing downloads.
    subprocess.run(cmd, check=True, timeout=60, capture_output=True)
    assert Counting.downloads == 1
