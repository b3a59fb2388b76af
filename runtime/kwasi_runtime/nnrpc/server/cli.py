"""`kwasi-runtime nn-rpc-server`: WasmEdge's `wasi_nn_rpcserver` command line, plus kwasi's limits and security.

    kwasi-runtime nn-rpc-server --nn-rpc-uri unix:///run/nn.sock --nn-preload default:GGML:AUTO:model.gguf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kwasi_runtime.host_flags import add_model_arguments, build_local_host, positive
from kwasi_runtime.nnrpc.server.app import NNRpcServer, ServerConfig
from kwasi_runtime.nnrpc.server.security import Security


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nn-rpc-uri", required=True, metavar="unix:///PATH.sock|HOST:PORT",
                   help="where to listen: a unix socket (created 0600) or a TCP address (needs TLS or a token)")
    add_model_arguments(p)
    d = ServerConfig("")
    p.add_argument("--max-concurrency", type=positive(int), default=d.max_concurrency, metavar="N",
                   help="generations at once per model, its KV slots (default %(default)s)")
    p.add_argument("--max-sessions", type=positive(int), default=d.max_sessions, metavar="N",
                   help="clients at once (default %(default)s)")
    p.add_argument("--idle-session-timeout", type=float, default=d.idle_session_s, metavar="SECONDS",
                   help="free the handles of a client without sessions (WasmEdge's) after this long without "
                        "a call; 0 never (default %(default)s)")
    p.add_argument("--call-timeout", type=positive(float), default=d.call_timeout_s, metavar="SECONDS",
                   help="longest wait inside the server for any call (default %(default)s)")
    p.add_argument("--max-message-mib", type=positive(int), default=d.max_message_bytes >> 20, metavar="MIB",
                   help="largest message received or sent (default %(default)s)")
    p.add_argument("--keepalive-seconds", type=positive(float), default=d.keepalive_s, metavar="SECONDS",
                   help="ping quiet clients this often; one that does not answer within min(this, 10 s) is "
                        "dropped and its session freed (default %(default)s)")
    p.add_argument("--grace-period", type=float, default=d.grace_s, metavar="SECONDS",
                   help="on SIGTERM, how long running calls may finish (default %(default)s)")
    p.add_argument("--metrics-address", default=None, metavar="HOST:PORT",
                   help="serve /metrics, /healthz and /readyz over HTTP here")
    s = p.add_argument_group("security")
    s.add_argument("--socket-group", default=None, metavar="GROUP",
                   help="make the unix socket 0660 and owned by this group (default: 0600, owner only)")
    s.add_argument("--tls-cert", type=Path, default=None, metavar="PEM", help="TLS certificate (chain)")
    s.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="TLS private key")
    s.add_argument("--tls-client-ca", type=Path, default=None, metavar="PEM",
                   help="require client certificates signed by this CA (mutual TLS)")
    s.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                   help="require `authorization: Bearer <the file's content>` on every call but health checks")
    s.add_argument("--insecure", action="store_true",
                   help="serve TCP without TLS or token: anyone who reaches the port can use the models")


def server_main(args: argparse.Namespace) -> int:
    security = Security(tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                        token_file=args.token_file, insecure=args.insecure, socket_group=args.socket_group)
    config = ServerConfig(
        uri=args.nn_rpc_uri, max_concurrency=args.max_concurrency, max_sessions=args.max_sessions,
        idle_session_s=args.idle_session_timeout, call_timeout_s=args.call_timeout,
        max_message_bytes=args.max_message_mib << 20, keepalive_s=args.keepalive_seconds, grace_s=args.grace_period,
        metrics_address=args.metrics_address, security=security,
    )
    try:
        security.validate(config.uri)
        server = NNRpcServer(config, build_local_host(args))
    except ValueError as e:
        print(f"kwasi-runtime: {e}", file=sys.stderr)
        return 2
    return server.serve_until_signal()
