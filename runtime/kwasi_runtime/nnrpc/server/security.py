"""Who may call the server: a unix socket only its owner (or a chosen group) can open, or TCP with TLS and/or
a bearer token. Plain TCP needs `--insecure`, said out loud; the server refuses to start otherwise."""

from __future__ import annotations

import contextlib
import grp
import hmac
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from kwasi_runtime.nnrpc import wire
from kwasi_runtime.nnrpc.client.options import is_local_uri

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the type stubs
HEALTH_PREFIX = "/grpc.health.v1.Health/"  # probes carry no token; health tells nothing about the models


@dataclass(frozen=True)
class Security:
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # require client certificates signed by it (mutual TLS)
    token_file: Path | None = None
    insecure: bool = False
    socket_group: str | None = None  # unix socket 0660 with this group instead of 0600

    def validate(self, uri: str) -> None:
        """Raises ValueError naming the flag when the server must not start this way."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key),
                           ("--tls-client-ca", self.tls_client_ca), ("--token-file", self.token_file)):
            if path is not None and not path.is_file():
                raise ValueError(f"{flag} {path}: no such file")
        if self.token_file is not None and not self.token():
            raise ValueError(f"--token-file {self.token_file} is empty")
        if is_local_uri(uri):
            if self.tls_cert is not None:
                raise ValueError("--tls-* apply to TCP addresses, not to a unix socket")
            if self.socket_group is not None:
                group_id(self.socket_group)
        else:
            if self.socket_group is not None:
                raise ValueError("--socket-group applies to a unix socket")
            if self.tls_cert is None and self.token_file is None and not self.insecure:
                raise ValueError(f"--nn-rpc-uri {uri}: a TCP server needs --tls-cert/--tls-key or --token-file; "
                                 "--insecure serves anyone who can reach the port, in the clear")

    def token(self) -> str:
        return self.token_file.read_text().strip() if self.token_file else ""

    def credentials(self) -> grpc.ServerCredentials | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        client_ca = self.tls_client_ca.read_bytes() if self.tls_client_ca else None
        return grpc.ssl_server_credentials([(self.tls_key.read_bytes(), self.tls_cert.read_bytes())],
                                           root_certificates=client_ca, require_client_auth=client_ca is not None)

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        token = self.token()
        return [TokenCheck(token)] if token else []


def group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise ValueError(f"--socket-group {name}: no such group") from None


def unix_path(uri: str) -> Path:
    """unix:///abs/path, unix:/abs/path or unix:relative/path (gRPC's forms) → the socket's path."""
    rest = uri.removeprefix("unix:")
    return Path(rest[2:] if rest.startswith("//") else rest)


def prepare_socket_path(path: Path) -> None:
    """Removes a socket file left by a server that died; refuses a live server's socket or any other file."""
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise ValueError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: a leftover
        return
    finally:
        probe.close()
    raise ValueError(f"{path}: another server is listening on it")


def listen(server: grpc.Server, uri: str, security: Security) -> int:
    """Binds `uri` (a unix socket owner-only, or group-shared) and returns the TCP port (0 for a socket)."""
    if not is_local_uri(uri):
        creds = security.credentials()
        return server.add_secure_port(uri, creds) if creds else server.add_insecure_port(uri)
    path = unix_path(uri) if uri.startswith("unix:") else None
    if path is not None:
        prepare_socket_path(path)
    # The socket is created by bind(); the umask makes it 0600 from its first instant, not after a chmod.
    old = os.umask(0o177)
    try:
        server.add_insecure_port(uri)
    finally:
        os.umask(old)
    if path is not None and security.socket_group is not None:
        os.chown(path, -1, group_id(security.socket_group))
        path.chmod(0o660)
    return 0


def remove_socket(uri: str) -> None:
    if uri.startswith("unix:"):
        with contextlib.suppress(FileNotFoundError):
            unix_path(uri).unlink()


class TokenCheck(grpc.ServerInterceptor):
    """Every call but health checks needs `authorization: Bearer <token>` (compared in constant time)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], _Handler | None],
                          details: grpc.HandlerCallDetails) -> _Handler | None:
        handler = continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        for key, value in details.invocation_metadata:
            given = value.encode() if isinstance(value, str) else bytes(value)
            if key == wire.AUTH_KEY and hmac.compare_digest(given, self._expected):
                return handler
        return _denied(handler)


def _denied(handler: _Handler) -> _Handler:
    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "this server needs a valid bearer token")

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)
