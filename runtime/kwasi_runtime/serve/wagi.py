"""WAGI/CGI conventions: the request as environment variables, and the optional response prelude.

A guest's stdout is a CGI response when its first lines form a header block (``Name: value`` lines ended by
an empty line) that names ``Status``, ``Content-Type`` or ``Location`` (RFC 3875 requires one of them);
anything else is the body of a 200 text/plain response. Writing the prelude first also lets the first body
byte stream at once: without one, the server holds back a first line that could still become a header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_PRELUDE_BYTES = 16 << 10
DEFAULT_CONTENT_TYPE = "text/plain; charset=utf-8"
CGI_CONTENT_TYPE = "application/octet-stream"
# The server frames the body itself (chunked); a guest must not be able to desynchronise it.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade",
               "proxy-connection"}
_HEADER_LINE = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*\r?$")
# A first line that may still turn into a header line once more bytes arrive.
_HEADER_PREFIX = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]*(:[^\n]*)?$")
_CGI_NAMES = {b"status", b"content-type", b"location"}


@dataclass(frozen=True)
class RequestInfo:
    method: str
    path: str  # decoded
    raw_path: str
    query: str
    headers: Iterable[tuple[str, str]]
    remote: str
    server_name: str
    server_port: int
    route: str = "/..."


def request_env(req: RequestInfo, body_len: int) -> list[tuple[str, str]]:
    """The WAGI variable set (deislabs/wagi's names) with every header as HTTP_NAME."""
    env: dict[str, str] = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "kwasi",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": req.server_name,
        "SERVER_PORT": str(req.server_port),
        "REQUEST_METHOD": req.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": req.path,
        "X_RAW_PATH_INFO": req.raw_path,
        "QUERY_STRING": req.query,
        "X_MATCHED_ROUTE": req.route,
        "X_FULL_URL": f"http://{req.server_name}:{req.server_port}{req.raw_path}"
                      + (f"?{req.query}" if req.query else ""),
        "REMOTE_ADDR": req.remote,
        "REMOTE_HOST": req.remote,
        "CONTENT_LENGTH": str(body_len),
    }
    for name, value in req.headers:
        key = "HTTP_" + name.upper().replace("-", "_")
        if name.lower() == "content-type":
            env["CONTENT_TYPE"] = value
        env[key] = f"{env[key]}, {value}" if key in env else value
    return list(env.items())


@dataclass
class Head:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)


class PreludeParser:
    """Feeds guest stdout until it can tell whether a CGI header block starts it.

    `feed` returns None while undecided, else (head, body bytes that followed); `finish` decides at EOF.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> tuple[Head, bytes] | None:
        self._buf += data
        return self._decide(final=False)

    def finish(self) -> tuple[Head, bytes]:
        decided = self._decide(final=True)
        assert decided is not None
        return decided

    def _decide(self, final: bool) -> tuple[Head, bytes] | None:
        buf = bytes(self._buf)
        if len(buf) > MAX_PRELUDE_BYTES:
            return _plain(buf)
        lines: list[tuple[bytes, bytes]] = []
        pos = 0
        while (nl := buf.find(b"\n", pos)) >= 0:
            line = buf[pos:nl]
            if line in (b"", b"\r"):  # the empty line ending a header block
                return _cgi(lines, buf[nl + 1:]) if lines else _plain(buf)
            m = _HEADER_LINE.match(line)
            if m is None:
                return _plain(buf)
            lines.append((m.group(1), m.group(2)))
            pos = nl + 1
        rest = buf[pos:]
        if not final:
            # Undecided while the unfinished line can still become a header line.
            # A lone "\r" may be the start of the "\r\n" that ends the block.
            return None if rest == b"\r" or _HEADER_PREFIX.match(rest) else _plain(buf)
        if rest.strip():
            m = _HEADER_LINE.match(rest)
            if m is None:
                return _plain(buf)
            lines.append((m.group(1), m.group(2)))
        # EOF inside a header block: headers only, empty body.
        return _cgi(lines, b"") if lines else _plain(buf)


def _plain(body: bytes) -> tuple[Head, bytes]:
    return Head(200, [("Content-Type", DEFAULT_CONTENT_TYPE)]), body


def _cgi(lines: list[tuple[bytes, bytes]], body: bytes) -> tuple[Head, bytes]:
    names = {name.lower() for name, _ in lines}
    if not names & _CGI_NAMES:
        return _plain(b"".join(n + b": " + v + b"\n" for n, v in lines) + b"\n" + body)
    head = Head()
    for raw_name, raw_value in lines:
        name = raw_name.decode("ascii")
        value = raw_value.decode("latin-1")
        if name.lower() == "status":
            code = value.split(" ", 1)[0]
            head.status = int(code) if code.isdigit() and 100 <= int(code) <= 599 else 500
        elif name.lower() not in _HOP_BY_HOP:
            head.headers.append((name, value))
    present = {n.lower() for n, _ in head.headers}
    if "location" in present and b"status" not in names:
        head.status = 302
    if "content-type" not in present:
        head.headers.append(("Content-Type", CGI_CONTENT_TYPE))
    return head, body
