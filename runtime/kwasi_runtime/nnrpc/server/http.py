"""The server's plain-HTTP side: /metrics for Prometheus and /healthz, /readyz for probes (Kubernetes' gRPC
probes cannot speak TLS, so the TLS gRPC port is not where a kubelet can look)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--metrics-address {address!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class StatusServer:
    def __init__(self, address: str, exposition: Callable[[], bytes], ready: Callable[[], str | None]) -> None:
        """`ready()` is None when ready, else why not."""

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, exposition(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(200, b"ok\n")
                elif path == "/readyz":
                    why = ready()
                    self._reply(200, b"ready\n") if why is None else self._reply(503, f"not ready: {why}\n".encode())
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would drown the log

        self._httpd = ThreadingHTTPServer(split_address(address), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="nnrpc-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
