"""`fetch`: downloads once over real HTTP (loopback), verifies sha256, never leaves a partial file."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kwasi_runtime.fetch import FetchError, fetch

PAYLOAD = b"\0asm" + bytes(range(256)) * 64


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    (tmp_path / "app.wasm").write_bytes(PAYLOAD)
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            hits.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()


def test_downloads_once_and_verifies(server: tuple[str, list[str]], tmp_path: Path) -> None:
    base, hits = server
    dest = tmp_path / "out" / "app.wasm"
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert fetch(f"{base}/app.wasm", digest, dest) is True
    assert dest.read_bytes() == PAYLOAD
    assert fetch(f"{base}/app.wasm", digest.upper(), dest) is False  # present and verified: no download
    assert len(hits) == 1


def test_wrong_digest_leaves_nothing(server: tuple[str, list[str]], tmp_path: Path) -> None:
    base, _ = server
    dest = tmp_path / "out" / "app.wasm"
    with pytest.raises(FetchError, match="sha256 is"):
        fetch(f"{base}/app.wasm", "0" * 64, dest)
    assert list(dest.parent.iterdir()) == []


def test_missing_and_unsupported(server: tuple[str, list[str]], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(FetchError, match="404"):
        fetch(f"{base}/nope.wasm", "0" * 64, tmp_path / "x")
    with pytest.raises(FetchError, match="unsupported URL scheme"):
        fetch("ftp://h/x", "0" * 64, tmp_path / "x")


def test_cli_fetch_exit_codes(server: tuple[str, list[str]], tmp_path: Path) -> None:
    import subprocess
    import sys

    base, _ = server
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    cmd = [sys.executable, "-m", "kwasi_runtime.cli", "fetch", "--sha256"]
    ok = subprocess.run([*cmd, digest, f"{base}/app.wasm", str(tmp_path / "m" / "app.wasm")],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "m" / "app.wasm").read_bytes() == PAYLOAD
    bad = subprocess.run([*cmd, "0" * 64, f"{base}/app.wasm", str(tmp_path / "n" / "app.wasm")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "fetch failed" in bad.stderr and "sha256 is" in bad.stderr
