"""The flags every command that hosts guests shares (`run`, `serve`), and the host they describe.

`--nn-preload` takes WasmEdge's syntax, `--nn-graph` Wasmtime's; `--nn-config` adds default graph config keys per
named model (what the operator renders from `models[].config`); `--nn-rpc-uri` puts the models on an NNRPC server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kwasi_runtime.backends.registry import BackendOptions, Backends
from kwasi_runtime.nn.abi import ExecutionTarget, GraphEncoding, TensorTypeNumbering
from kwasi_runtime.nn.host import HostOptions, NNHost
from kwasi_runtime.nn.models import ConfiguredModel, NamedModels
from kwasi_runtime.nnrpc.client import remote_host
from kwasi_runtime.nnrpc.client.options import add_client_arguments, client_options

log = logging.getLogger(__name__)

DEFAULT_MAX_MEMORY_MIB = 4096
# WasmEdge re-joins the remaining segments of these encodings into one path (Windows drive letters) and
# reads the file lazily at load time.
_SINGLE_PATH_ENCODINGS = {GraphEncoding.GGML, GraphEncoding.BITNET}


def env_pair(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise ValueError(f"--env {value!r}: expected KEY=VALUE")
    return key, val


def positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a {kind.__name__}") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"{value!r} must be positive")
        return number

    return parse


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Flags that say which models a host serves and how it reads guests' tensors (run, serve, nn-rpc-server)."""
    p.add_argument("--nn-preload", action="append", default=[], metavar="NAME:ENCODING:TARGET:PATH[:PATH...]",
                   help="register a named model (WasmEdge syntax; encoding and target case-insensitive)")
    p.add_argument("--nn-graph", action="append", default=[], metavar="ENCODING::DIR",
                   help="register a named model from a directory (Wasmtime syntax; name = last component)")
    p.add_argument("--nn-config", action="append", default=[], metavar="NAME=JSON",
                   help="default graph config for a named model; the guest's own keys take precedence")
    p.add_argument("--wasmedge-compat", action="store_true",
                   help="WasmEdge quirks: copy whole outputs past the guest's buffer size "
                        "when they fit in memory; float32 torch outputs")
    p.add_argument("--tensor-types", choices=[n.value for n in TensorTypeNumbering],
                   default=TensorTypeNumbering.WITX.value,
                   help="tensor type numbering: witx (current), legacy (WasmEdge <= 0.14), wit")
    p.add_argument("--log-level", default=os.environ.get("KWASI_LOG", "warning"),
                   choices=["debug", "info", "warning", "error"])


def add_host_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that hosts guests (run, serve)."""
    add_model_arguments(p)
    p.add_argument("--dir", action="append", default=[], metavar="GUEST:HOST[:readonly|:rw]",
                   help="preopen a host directory, read-only unless suffixed :rw")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set a guest environment variable (the host environment is never passed)")
    p.add_argument("--timeout", type=positive(float), default=None, metavar="SECONDS",
                   help="interrupt the guest after this many seconds (epoch deadline)")
    p.add_argument("--max-memory", type=positive(int), default=DEFAULT_MAX_MEMORY_MIB, metavar="MIB",
                   help="linear memory limit per guest (default %(default)s MiB)")
    p.add_argument("--fuel", type=positive(int), default=None, metavar="N",
                   help="instruction fuel per run (off by default)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="compiled module cache (default $KWASI_CACHE_DIR or ~/.cache/kwasi/modules)")
    p.add_argument("--no-cache", action="store_true", help="do not cache compiled modules")
    add_client_arguments(p)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    encoding: GraphEncoding
    target: ExecutionTarget
    paths: tuple[Path, ...]


def parse_nn_preload(value: str) -> ModelSpec:
    """`name:encoding:target:path[:path...]`; raises ValueError naming the bad part."""
    parts = value.split(":")
    if len(parts) < 4 or not all(parts[:4]):
        raise ValueError(
            f"--nn-preload {value!r}: expected name:encoding:target:path[:path...]"
        )
    name, enc, tgt = parts[0], parts[1], parts[2]
    try:
        encoding = GraphEncoding.parse(enc)
    except ValueError as e:
        raise ValueError(f"--nn-preload {value!r}: {e}") from None
    try:
        target = ExecutionTarget.parse(tgt)
    except ValueError as e:
        raise ValueError(f"--nn-preload {value!r}: {e}") from None
    rest = parts[3:]
    paths = (":".join(rest),) if encoding in _SINGLE_PATH_ENCODINGS else tuple(rest)
    if not all(paths):
        raise ValueError(f"--nn-preload {value!r}: empty model path")
    return ModelSpec(name, encoding, target, tuple(Path(p) for p in paths))


def parse_nn_graph(value: str) -> ModelSpec:
    """`encoding::dir`; the name is the directory's last component and Wasmtime loads it on the CPU."""
    enc, sep, directory = value.partition("::")
    if not sep or not enc or not directory:
        raise ValueError(f"--nn-graph {value!r}: expected encoding::directory")
    try:
        encoding = GraphEncoding.parse(enc)
    except ValueError as e:
        raise ValueError(f"--nn-graph {value!r}: {e}") from None
    path = Path(directory)
    name = path.resolve().name if directory.rstrip("/") in {".", ".."} else path.name
    if not name:
        raise ValueError(f"--nn-graph {value!r}: cannot take a model name from {directory!r}")
    if encoding is GraphEncoding.PYTORCH and not (path / "config.json").exists():
        paths: tuple[Path, ...] = (path / "model.pt",)
    else:
        paths = (path,)
    return ModelSpec(name, encoding, ExecutionTarget.CPU, paths)


def parse_nn_config(value: str) -> tuple[str, dict[str, object]]:
    """`name=JSON-object`: default graph config for a named model (the operator's `models[].config`)."""
    name, sep, raw = value.partition("=")
    if not sep or not name:
        raise ValueError(f"--nn-config {value!r}: expected NAME={{json object}}")
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"--nn-config {name!r}: not JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"--nn-config {name!r}: expected a JSON object")
    return name, config


def load_models(
    specs: Iterable[ModelSpec], backends: Backends, configs: dict[str, dict[str, object]] | None = None
) -> NamedModels:
    """Loads every spec; raises ValueError with the model name on a start-up failure."""
    configs = dict(configs or {})
    models = NamedModels()
    for spec in specs:
        if models.get(spec.name) is not None:
            log.warning("model name %r given twice; keeping the first", spec.name)
            continue
        backend = backends.for_preload(spec.encoding, spec.paths)
        try:
            model = backend.preload(spec.paths, spec.target)
        except ValueError as e:
            raise ValueError(f"model {spec.name!r}: {e}") from None
        defaults = configs.pop(spec.name, None)
        models.register(spec.name, ConfiguredModel(model, defaults) if defaults else model)
        log.info("model %r loaded (%s, %s)", spec.name, spec.encoding.name.lower(), spec.target.name.lower())
    if configs:
        raise ValueError(f"--nn-config names no model: {', '.join(sorted(configs))}")
    return models


def host_options(args: argparse.Namespace) -> HostOptions:
    return HostOptions(wasmedge_compat=args.wasmedge_compat, tensor_types=TensorTypeNumbering(args.tensor_types))


def build_host(args: argparse.Namespace) -> NNHost:
    """The host the flags describe: local models, or with --nn-rpc-uri a remote server's; raises ValueError
    naming the bad part."""
    remote = client_options(args)
    if remote is None:
        return build_local_host(args)
    for flag, values in (("--nn-preload", args.nn_preload), ("--nn-graph", args.nn_graph),
                         ("--nn-config", args.nn_config)):
        if values:
            raise ValueError(f"{flag} {values[0]}: with --nn-rpc-uri the models live on the server; "
                             f"give {flag} to `kwasi-runtime nn-rpc-server` instead")
    return remote_host(remote, host_options(args))


def build_local_host(args: argparse.Namespace) -> NNHost:
    """Named models loaded here and host options from flags; raises ValueError naming the bad part."""
    specs: list[ModelSpec] = [parse_nn_preload(v) for v in args.nn_preload]
    specs += [parse_nn_graph(v) for v in args.nn_graph]
    backends = Backends(BackendOptions(torch_output_f32=args.wasmedge_compat))
    configs = dict(parse_nn_config(v) for v in args.nn_config)
    models = load_models(specs, backends, configs)
    return NNHost(models, backends, host_options(args))
