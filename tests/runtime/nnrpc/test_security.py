"""Who may reach the models: an owner-only unix socket, TLS (optionally mutual) or a bearer token on TCP, and
no plain TCP unless --insecure is said out loud (the server refuses to start otherwise)."""

from __future__ import annotations

import grp
import os
import socket
import stat
import subprocess
from pathlib import Path

import grpc
import pytest

from kwasi_runtime.nn.abi import Errno, NNError
from kwasi_runtime.nnrpc.server.app import NNRpcServer, ServerConfig
from kwasi_runtime.nnrpc.server.security import Security, unix_path
from kwasi_testing.guests import built_guest
from kwasi_testing.net import free_port
from kwasi_testing.nnrpc import cli, client_host, make_tls, preload_host, raw_unary, rpc_server, wait_serving


def load(uri: str, **options: object) -> Errno:
    """The errno a client gets for a first call (0: it got through)."""
    host = client_host(uri, connect_timeout_s=3.0, **options)
    try:
        model = host.models.get("default")
        assert model is not None
        model.graph(None).close()
        return Errno.SUCCESS
    except NNError as e:
        return e.errno
    finally:
        host.models.close()


def test_the_unix_socket_is_owner_only_or_shared_with_a_group(tmp_path: Path, scripted_gguf: Path) -> None:
    host = preload_host(f"default:GGML:CPU:{scripted_gguf}")
    with rpc_server(host, f"unix://{tmp_path}/a.sock") as s:
        assert stat.S_IMODE(os.stat(unix_path(s.config.uri)).st_mode) == 0o600
    group = grp.getgrgid(os.getgid()).gr_name
    with rpc_server(host, f"unix://{tmp_path}/b.sock", security=Security(socket_group=group)) as s:
        info = os.stat(unix_path(s.config.uri))
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == os.getgid()
        assert load(s.config.uri) == Errno.SUCCESS
    assert not (tmp_path / "b.sock").exists()  # removed at stop


def test_a_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path, scripted_gguf: Path) -> None:
    host = preload_host(f"default:GGML:CPU:{scripted_gguf}")
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as leftover:
        leftover.bind(str(path))  # bound, never listening: what a killed server leaves
    with rpc_server(host, f"unix://{path}") as s:
        assert load(s.config.uri) == Errno.SUCCESS
        with pytest.raises(ValueError, match="another server is listening"):
            NNRpcServer(s.config, host).start()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a socket"):
        NNRpcServer(ServerConfig(f"unix://{tmp_path}/file"), host).start()


@pytest.mark.parametrize(("flags", "message"), [
    ((), "a TCP server needs --tls-cert/--tls-key or --token-file"),
    (("--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"), "no such file"),
    (("--socket-group", "root"), "--socket-group applies to a unix socket"),
])
def test_the_server_refuses_to_start_unprotected(flags: tuple[str, ...], message: str) -> None:
    r = subprocess.run(cli("nn-rpc-server", "--nn-rpc-uri", f"127.0.0.1:{free_port()}", *flags),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_tls_and_mutual_tls(tmp_path: Path, scripted_gguf: Path) -> None:
    pki = make_tls(tmp_path)
    host = preload_host(f"default:GGML:CPU:{scripted_gguf}")
    uri = f"localhost:{free_port()}"
    with rpc_server(host, uri, security=Security(tls_cert=pki["server.crt"], tls_key=pki["server.key"])):
        assert load(uri, tls_ca=pki["ca.crt"]) == Errno.SUCCESS
        assert load(uri, insecure=True) == Errno.RUNTIME_ERROR  # plaintext to a TLS port
        assert load(uri, tls_on=True) == Errno.RUNTIME_ERROR  # the system CAs do not know this one
    uri = f"localhost:{free_port()}"
    mutual = Security(tls_cert=pki["server.crt"], tls_key=pki["server.key"], tls_client_ca=pki["ca.crt"])
    with rpc_server(host, uri, security=mutual):
        assert load(uri, tls_ca=pki["ca.crt"]) == Errno.RUNTIME_ERROR  # no client certificate
        assert load(uri, tls_ca=pki["ca.crt"], tls_cert=pki["client.crt"], tls_key=pki["client.key"]) == 0
        wait_serving(uri, credentials=grpc.ssl_channel_credentials(
            pki["ca.crt"].read_bytes(), pki["client.key"].read_bytes(), pki["client.crt"].read_bytes()))


def test_a_bearer_token_guards_everything_but_health(tmp_path: Path, scripted_gguf: Path) -> None:
    token, wrong = tmp_path / "token", tmp_path / "wrong"
    token.write_text("s3cret-token\n")
    wrong.write_text("guess\n")
    uri = f"127.0.0.1:{free_port()}"
    with rpc_server(preload_host(f"default:GGML:CPU:{scripted_gguf}"), uri, security=Security(token_file=token)):
        assert load(uri, token_file=token) == Errno.SUCCESS
        assert load(uri, token_file=wrong) == Errno.RUNTIME_ERROR
        assert load(uri, insecure=True) == Errno.RUNTIME_ERROR
        wait_serving(uri, timeout=5)  # probes need no token
        with grpc.insecure_channel(uri) as channel:
            with pytest.raises(grpc.RpcError) as e:
                raw_unary(channel, "/wasi_ephemeral_nn.Graph/LoadByName")(b"\x0a\x07default", timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(("flags", "message"), [
    (("--nn-rpc-uri", "127.0.0.1:1"), "a TCP server needs TLS"),
    (("--nn-rpc-uri", "unix:///x.sock", "--nn-rpc-tls-ca", "/etc/hostname"), "not to a unix socket"),
    (("--nn-rpc-uri", "unix:///x.sock", "--nn-preload", "default:GGML:AUTO:/m.gguf"),
     "--nn-preload default:GGML:AUTO:/m.gguf: with --nn-rpc-uri the models live on the server"),
])
def test_the_client_refuses_unsafe_or_contradictory_flags(flags: tuple[str, ...], message: str) -> None:
    r = subprocess.run(cli("run", *flags, built_guest("llm_stream")), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr, r.stderr
