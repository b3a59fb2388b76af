"""`kwasi-runtime`: `run` (a drop-in for `wasmedge --dir … --env … --nn-preload … module.wasm args`), `serve`,
`nn-rpc-server` (a drop-in for WasmEdge's `wasi_nn_rpcserver`) and `fetch`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kwasi_runtime.fetch import FetchError, fetch
from kwasi_runtime.host_flags import add_host_arguments, build_host, env_pair, positive
from kwasi_runtime.nnrpc.server.cli import add_server_arguments, server_main
from kwasi_runtime.sandbox import Limits, Preopen, Sandbox, WasiSetup, parse_dir
from kwasi_runtime.serve.cli import add_serve_arguments, serve_main
from kwasi_runtime.wasm.engine import EngineSettings
from kwasi_runtime.wasm.module_cache import default_cache_dir

EXIT_TRAP = 134  # as wasmtime's CLI: 128 + SIGABRT
EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_USAGE = 2

log = logging.getLogger("kwasi_runtime")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kwasi-runtime", description="WASI-NN host on wasmtime with PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a WASI command module to completion")
    add_host_arguments(run)
    run.add_argument("module", type=Path, help="the guest .wasm")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the guest")
    serve = sub.add_parser("serve", help="serve a WAGI guest and the OpenAI-compatible API over HTTP")
    add_host_arguments(serve)
    add_serve_arguments(serve)
    rpc = sub.add_parser("nn-rpc-server", help="serve named models over NNRPC (WasmEdge's wasi_nn_rpcserver)")
    add_server_arguments(rpc)
    fetch = sub.add_parser("fetch", help="download a module or model once, verified against its sha256")
    fetch.add_argument("--sha256", required=True, help="expected lowercase hex digest")
    fetch.add_argument("--timeout", type=positive(float), default=60.0, metavar="SECONDS")
    fetch.add_argument("url")
    fetch.add_argument("dest", type=Path)
    fetch.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def _fetch(args: argparse.Namespace) -> int:
    try:
        downloaded = fetch(args.url, args.sha256, args.dest, timeout_s=args.timeout)
    except FetchError as e:
        print(f"kwasi-runtime: fetch failed: {e}", file=sys.stderr)
        return 1
    log.info("%s %s", "downloaded" if downloaded else "already present:", args.dest)
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        dirs: list[Preopen] = [parse_dir(v) for v in args.dir]
        env = [env_pair(v) for v in args.env]
        if not args.module.is_file():
            raise ValueError(f"module {str(args.module)!r} does not exist")
        host = build_host(args)
    except ValueError as e:
        print(f"kwasi-runtime: {e}", file=sys.stderr)
        return EXIT_USAGE
    settings = EngineSettings(fuel=args.fuel is not None)
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    try:
        sandbox = Sandbox(args.module, host, settings=settings, cache_dir=cache)
    except Exception as e:  # wasmtime reports invalid modules and link errors as WasmtimeError
        print(f"kwasi-runtime: cannot load {args.module}: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    setup = WasiSetup(args=[args.module.name, *args.args], env=env, dirs=dirs,
                      stdin="inherit", stdout="inherit", stderr="inherit")
    limits = Limits(timeout_s=args.timeout, memory_bytes=args.max_memory << 20, fuel=args.fuel)
    result = sandbox.run(setup, limits)
    if result.exit_code is not None:
        return result.exit_code
    print(f"kwasi-runtime: trap: {result.trap}", file=sys.stderr)
    return EXIT_TIMEOUT if result.timed_out else EXIT_TRAP


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="kwasi-runtime: %(levelname)s %(name)s: %(message)s")
    commands = {"run": _run, "serve": serve_main, "nn-rpc-server": server_main, "fetch": _fetch}
    code = commands[args.command](args)
    sys.stdout.flush()
    sys.stderr.flush()
    # wasmtime's runtime threads can print a panic while the interpreter tears down; skip the teardown.
    os._exit(code)


if __name__ == "__main__":
    main()
