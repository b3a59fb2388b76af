"""NNRPC test helpers: a server in this process or in a child process, a client host, TLS files, and gRPC
stubs generated at test time from the repository's .proto (what a WasmEdge-style client would compile)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kwasi_runtime.backends.registry import Backends
from kwasi_runtime.host_flags import load_models, parse_nn_preload
from kwasi_runtime.nn.host import NNHost
from kwasi_runtime.nnrpc.client import remote_host
from kwasi_runtime.nnrpc.client.options import ClientOptions
from kwasi_runtime.nnrpc.server.app import NNRpcServer, ServerConfig
from kwasi_runtime.nnrpc.server.security import unix_path

PROTO_DIR = Path(__file__).resolve().parents[2] / "runtime" / "kwasi_runtime" / "nnrpc" / "proto"


def preload_host(*preloads: str) -> NNHost:
    """A local host over `name:encoding:target:path` preloads, as the server's CLI builds one."""
    backends = Backends()
    return NNHost(load_models([parse_nn_preload(p) for p in preloads], backends), backends)


@contextmanager
def rpc_server(host: NNHost, uri: str, **config: Any) -> Iterator[NNRpcServer]:
    """A started, ready server; stopped (sessions freed, socket removed) at the end."""
    settings: dict[str, Any] = {"grace_s": 0.0}
    settings.update(config)
    server = NNRpcServer(ServerConfig(uri, **settings), host)
    server.start()
    try:
        server.prepare()
        yield server
    finally:
        server.stop(0)


def client_host(uri: str, **options: Any) -> NNHost:
    settings: dict[str, Any] = {"timeout_s": 30.0, "connect_timeout_s": 5.0}
    settings.update(options)
    return remote_host(ClientOptions(uri, **settings))


def wait_serving(target: str, timeout: float = 120.0, credentials: grpc.ChannelCredentials | None = None,
                 **channel_options: Any) -> None:
    """Until the server at `target` says SERVING on the gRPC health service."""
    opts = list(channel_options.items())
    deadline = time.monotonic() + timeout
    while True:
        channel = (grpc.secure_channel(target, credentials, opts) if credentials
                   else grpc.insecure_channel(target, opts))
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        finally:
            channel.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target} did not become SERVING within {timeout}s")
        time.sleep(0.2)


def raw_unary(channel: grpc.Channel, path: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    """A method called with the request's bytes as they are (malformed ones included)."""
    return channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "kwasi_runtime.cli", *map(str, args)]


def quiet_env() -> dict[str, str]:
    # One torch thread: the suite shares 2 cores; these are behaviour tests, not benchmarks.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@contextmanager
def server_process(uri: str, *args: str | Path, ready: bool = True) -> Iterator[subprocess.Popen[str]]:
    """`kwasi-runtime nn-rpc-server` as a child process; killed (by its pid) at the end."""
    proc = subprocess.Popen(cli("nn-rpc-server", "--nn-rpc-uri", uri, "--grace-period", "0", *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=quiet_env())
    try:
        if ready:
            wait_serving(uri)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
        if uri.startswith("unix:"):
            unix_path(uri).unlink(missing_ok=True)


@contextmanager
def generated_stubs(tmp: Path) -> Iterator[tuple[ModuleType, ModuleType]]:
    """(wasi_ephemeral_nn_pb2, wasi_ephemeral_nn_pb2_grpc) compiled now from our .proto with grpc_tools, the
    way a WasmEdge-compatible client in any language would be made from the file."""
    from grpc_tools import protoc

    shutil.copy(PROTO_DIR / "wasi_ephemeral_nn.proto", tmp)
    include = str(Path(protoc.__file__).parent / "_proto")
    rc = protoc.main(["protoc", f"-I{tmp}", f"-I{include}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                      str(tmp / "wasi_ephemeral_nn.proto")])
    assert rc == 0
    sys.path.insert(0, str(tmp))
    try:
        yield importlib.import_module("wasi_ephemeral_nn_pb2"), importlib.import_module("wasi_ephemeral_nn_pb2_grpc")
    finally:
        sys.path.remove(str(tmp))
        for name in ("wasi_ephemeral_nn_pb2", "wasi_ephemeral_nn_pb2_grpc"):
            sys.modules.pop(name, None)


def make_tls(directory: Path, names: tuple[str, ...] = ("localhost",)) -> dict[str, Path]:
    """A CA, a server certificate for `names` (DNS and 127.0.0.1) and a client certificate, with openssl."""
    d = directory

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
        "-out", "ca.crt", "-days", "2", "-subj", "/CN=kwasi-test-ca")
    sans = ",".join([*(f"DNS:{n}" for n in names), "IP:127.0.0.1"])
    for who, ext in (("server", f"subjectAltName={sans}"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{who}.key",
            "-out", f"{who}.csr", "-subj", f"/CN={who}")
        (d / f"{who}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{who}.crt", "-days", "2", "-extfile", f"{who}.ext")
    return {name: d / name for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}
