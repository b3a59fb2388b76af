"""`kwasi-runtime run`: a drop-in for `wasmedge --dir … --env … --nn-preload … module.wasm args`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kwasi_runtime.abi import TensorTypeNumbering
from kwasi_runtime.backends import BackendOptions, Backends
from kwasi_runtime.engine import EngineSettings
from kwasi_runtime.fetch import FetchError, fetch
from kwasi_runtime.module_cache import default_cache_dir
from kwasi_runtime.named_models import ModelSpec, NamedModels, parse_nn_config, parse_nn_graph, parse_nn_preload
from kwasi_runtime.sandbox import Limits, Preopen, Sandbox, WasiSetup, parse_dir
from kwasi_runtime.serve.cli import add_serve_arguments, serve_main
from kwasi_runtime.wasi_nn import HostOptions, NNHost

EXIT_TRAP = 134  # as wasmtime's CLI: 128 + SIGABRT
EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_USAGE = 2
DEFAULT_MAX_MEMORY_MIB = 4096

log = logging.getLogger("kwasi_runtime")


def _env_pair(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise ValueError(f"--env {value!r}: expected KEY=VALUE")
    return key, val


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a {kind.__name__}") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"{value!r} must be positive")
        return number

    return parse


def add_host_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that hosts guests (run, and serve later)."""
    p.add_argument("--nn-preload", action="append", default=[], metavar="NAME:ENCODING:TARGET:PATH[:PATH...]",
                   help="register a named model (WasmEdge syntax; encoding and target case-insensitive)")
    p.add_argument("--nn-graph", action="append", default=[], metavar="ENCODING::DIR",
                   help="register a named model from a directory (Wasmtime syntax; name = last component)")
    p.add_argument("--nn-config", action="append", default=[], metavar="NAME=JSON",
                   help="default graph config for a named model; the guest's own keys take precedence")
    p.add_argument("--dir", action="append", default=[], metavar="GUEST:HOST[:readonly|:rw]",
                   help="preopen a host directory, read-only unless suffixed :rw")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set a guest environment variable (the host environment is never passed)")
    p.add_argument("--timeout", type=_positive(float), default=None, metavar="SECONDS",
                   help="interrupt the guest after this many seconds (epoch deadline)")
    p.add_argument("--max-memory", type=_positive(int), default=DEFAULT_MAX_MEMORY_MIB, metavar="MIB",
                   help="linear memory limit per guest (default %(default)s MiB)")
    p.add_argument("--fuel", type=_positive(int), default=None, metavar="N",
                   help="instruction fuel per run (off by default)")
    p.add_argument("--wasmedge-compat", action="store_true",
                   help="WasmEdge quirks: copy whole outputs past the guest's buffer size "
                        "when they fit in memory; float32 torch outputs")
    p.add_argument("--tensor-types", choices=[n.value for n in TensorTypeNumbering],
                   default=TensorTypeNumbering.WITX.value,
                   help="tensor type numbering: witx (current), legacy (WasmEdge <= 0.14), wit")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="compiled module cache (default $KWASI_CACHE_DIR or ~/.cache/kwasi/modules)")
    p.add_argument("--no-cache", action="store_true", help="do not cache compiled modules")
    p.add_argument("--log-level", default=os.environ.get("KWASI_LOG", "warning"),
                   choices=["debug", "info", "warning", "error"])


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
    fetch = sub.add_parser("fetch", help="download a module or model once, verified against its sha256")
    fetch.add_argument("--sha256", required=True, help="expected lowercase hex digest")
    fetch.add_argument("--timeout", type=_positive(float), default=60.0, metavar="SECONDS")
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


def build_host(args: argparse.Namespace) -> NNHost:
    """Named models and host options from flags; raises ValueError naming the bad part."""
    specs: list[ModelSpec] = [parse_nn_preload(v) for v in args.nn_preload]
    specs += [parse_nn_graph(v) for v in args.nn_graph]
    backends = Backends(BackendOptions(torch_output_f32=args.wasmedge_compat))
    configs = dict(parse_nn_config(v) for v in args.nn_config)
    models = NamedModels.load(specs, backends, configs)
    options = HostOptions(wasmedge_compat=args.wasmedge_compat,
                          tensor_types=TensorTypeNumbering(args.tensor_types))
    return NNHost(models, backends, options)


def _run(args: argparse.Namespace) -> int:
    try:
        dirs: list[Preopen] = [parse_dir(v) for v in args.dir]
        env = [_env_pair(v) for v in args.env]
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
    commands = {"run": _run, "serve": serve_main, "fetch": _fetch}
    code = commands[args.command](args)
    sys.stdout.flush()
    sys.stderr.flush()
    # wasmtime's runtime threads can print a panic while the interpreter tears down; skip the teardown.
    os._exit(code)


if __name__ == "__main__":
    main()
