"""The `serve` subcommand's flags and entry point (the shared host flags come from kwasi_runtime.host_flags)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from kwasi_runtime.host_flags import build_host, env_pair
from kwasi_runtime.sandbox import parse_dir
from kwasi_runtime.serve.config import ServeConfig
from kwasi_runtime.serve.server import Server
from kwasi_runtime.wasm.module_cache import default_cache_dir

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0


def _count(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must not be negative")
    return n


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--module", type=Path, default=None,
                   help="WAGI guest serving every path outside /healthz, /readyz, /metrics and /v1/")
    p.add_argument("--chat-module", type=Path, default=None,
                   help="guest behind /v1/chat/completions and /v1/completions (default: the bundled openai_chat)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-concurrency", type=_count, default=4, metavar="N", help="guests running at once")
    p.add_argument("--max-queue", type=_count, default=64, metavar="N",
                   help="requests waiting for a guest before 429 (default %(default)s)")
    p.add_argument("--max-body-bytes", type=_count, default=4 << 20, metavar="N",
                   help="request body limit, 413 beyond (default %(default)s)")
    p.add_argument("--grace-period", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM, how long in-flight streams may finish (default %(default)s)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every route but /healthz, /readyz and /metrics "
                        "(default: $KWASI_API_KEY; none without it)")
    p.add_argument("--vllm-metrics", action="store_true",
                   help="also export vLLM's metric names and model_name label on /metrics")
    # A server must bound every request: no deadline is not an option here.
    p.set_defaults(timeout=DEFAULT_TIMEOUT_S)


def serve_main(args: argparse.Namespace) -> int:
    try:
        if args.module is not None and not args.module.is_file():
            raise ValueError(f"module {str(args.module)!r} does not exist")
        if args.chat_module is not None and not args.chat_module.is_file():
            raise ValueError(f"chat module {str(args.chat_module)!r} does not exist")
        config = ServeConfig(
            host=args.host, port=args.port, module=args.module, chat_module=args.chat_module,
            max_concurrency=max(1, args.max_concurrency), max_queue=args.max_queue, timeout_s=args.timeout,
            max_body_bytes=args.max_body_bytes, grace_s=args.grace_period, memory_bytes=args.max_memory << 20,
            fuel=args.fuel, env=tuple(env_pair(v) for v in args.env),
            dirs=tuple(parse_dir(v) for v in args.dir),
            cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir()),
            api_key=args.api_key or os.environ.get("KWASI_API_KEY") or None, vllm_metrics=args.vllm_metrics,
        )
        server = Server(config, build_host(args))  # with --nn-rpc-uri this asks the model server for its models
    except ValueError as e:
        print(f"kwasi-runtime: {e}", file=sys.stderr)
        return 2
    return asyncio.run(server.serve_until_signal())
