"""The client's flags (`--nn-rpc-uri` and its TLS, token, deadline and streaming settings) for `run` and `serve`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_MAX_MESSAGE_MIB = 64
DEFAULT_WINDOW = 2


def is_local_uri(uri: str) -> bool:
    """unix sockets are local: file permissions guard them, so they need neither TLS nor a token."""
    return uri.startswith(("unix:", "unix-abstract:"))


@dataclass(frozen=True)
class ClientOptions:
    uri: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    tls_on: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    token_file: Path | None = None
    insecure: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_MIB << 20
    stream: bool = True
    window: int = DEFAULT_WINDOW
    client_name: str = "kwasi-runtime"

    @property
    def tls(self) -> bool:
        return self.tls_on or self.tls_ca is not None or self.tls_cert is not None

    def validate(self) -> None:
        """Raises ValueError naming the flag: TCP needs TLS or a token, unless --nn-rpc-insecure."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--nn-rpc-tls-cert and --nn-rpc-tls-key go together")
        if is_local_uri(self.uri):
            if self.tls:
                raise ValueError("--nn-rpc-tls-* apply to TCP addresses, not to a unix socket")
        elif not (self.tls or self.token_file or self.insecure):
            raise ValueError(f"--nn-rpc-uri {self.uri}: a TCP server needs TLS (--nn-rpc-tls, --nn-rpc-tls-ca) or "
                             "--nn-rpc-token-file; --nn-rpc-insecure sends calls in the clear")
        for flag, path in (("--nn-rpc-tls-ca", self.tls_ca), ("--nn-rpc-tls-cert", self.tls_cert),
                           ("--nn-rpc-tls-key", self.tls_key), ("--nn-rpc-token-file", self.token_file)):
            if path is not None and not path.is_file():
                raise ValueError(f"{flag} {path}: no such file")
        if not 1 <= self.window <= 64:
            raise ValueError("--nn-rpc-window must be between 1 and 64")


def add_client_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("NNRPC client (models on a remote kwasi-runtime nn-rpc-server or wasi_nn_rpcserver)")
    g.add_argument("--nn-rpc-uri", default=None, metavar="unix:///PATH.sock|HOST:PORT",
                   help="send every WASI-NN call to this server instead of local models")
    g.add_argument("--nn-rpc-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="deadline of each call (default %(default)s)")
    g.add_argument("--nn-rpc-connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT_S, metavar="SECONDS",
                   help="how long the first call waits for the server to be reachable (default %(default)s)")
    g.add_argument("--nn-rpc-tls", action="store_true",
                   help="TLS with the system's CAs (implied by --nn-rpc-tls-ca)")
    g.add_argument("--nn-rpc-tls-ca", type=Path, default=None, metavar="PEM",
                   help="TLS: the CA that signed the server's certificate")
    g.add_argument("--nn-rpc-tls-cert", type=Path, default=None, metavar="PEM", help="TLS client certificate")
    g.add_argument("--nn-rpc-tls-key", type=Path, default=None, metavar="PEM", help="TLS client key")
    g.add_argument("--nn-rpc-tls-server-name", default=None, metavar="NAME",
                   help="the name the server's certificate must carry (default: the URI's host)")
    g.add_argument("--nn-rpc-token-file", type=Path, default=None, metavar="FILE",
                   help="send the bearer token in this file with every call")
    g.add_argument("--nn-rpc-insecure", action="store_true",
                   help="allow a TCP server without TLS or token (calls travel in the clear)")
    g.add_argument("--nn-rpc-max-message-mib", type=int, default=DEFAULT_MAX_MESSAGE_MIB, metavar="MIB",
                   help="largest message sent or accepted (default %(default)s)")
    g.add_argument("--nn-rpc-stream", choices=["auto", "off"], default="auto",
                   help="auto: stream tokens when the server offers it; off: one call per token as WasmEdge")
    g.add_argument("--nn-rpc-window", type=int, default=DEFAULT_WINDOW, metavar="STEPS",
                   help="tokens the server may generate ahead of the guest when streaming (default %(default)s)")


def client_options(args: argparse.Namespace, client_name: str = "kwasi-runtime") -> ClientOptions | None:
    """The options the flags describe, or None without --nn-rpc-uri; raises ValueError naming a bad flag."""
    uri: str | None = getattr(args, "nn_rpc_uri", None)
    if not uri:
        return None
    options = ClientOptions(
        uri=uri, timeout_s=args.nn_rpc_timeout, connect_timeout_s=args.nn_rpc_connect_timeout,
        tls_on=args.nn_rpc_tls, tls_ca=args.nn_rpc_tls_ca, tls_cert=args.nn_rpc_tls_cert, tls_key=args.nn_rpc_tls_key,
        tls_server_name=args.nn_rpc_tls_server_name, token_file=args.nn_rpc_token_file,
        insecure=args.nn_rpc_insecure, max_message_bytes=args.nn_rpc_max_message_mib << 20,
        stream=args.nn_rpc_stream == "auto", window=args.nn_rpc_window, client_name=client_name,
    )
    if options.timeout_s <= 0 or options.connect_timeout_s <= 0:
        raise ValueError("--nn-rpc-timeout and --nn-rpc-connect-timeout must be positive")
    options.validate()
    return options
