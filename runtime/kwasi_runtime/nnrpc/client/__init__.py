"""The NNRPC client: with `--nn-rpc-uri`, the host's models and `load` live on a remote server."""

from __future__ import annotations

from kwasi_runtime.nn.host import HostOptions, NNHost
from kwasi_runtime.nnrpc.client.connection import Connection
from kwasi_runtime.nnrpc.client.options import ClientOptions
from kwasi_runtime.nnrpc.client.remote import RemoteBackends, RemoteModels


def remote_host(options: ClientOptions, host_options: HostOptions | None = None) -> NNHost:
    """A host whose every WASI-NN call goes to the server at `options.uri` (guest pointers are still checked
    here, before any call)."""
    conn = Connection(options)
    return NNHost(RemoteModels(conn), RemoteBackends(conn), host_options)
