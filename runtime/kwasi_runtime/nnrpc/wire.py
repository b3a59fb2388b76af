"""What both ends of NNRPC agree on beyond the .proto files: method paths, metadata keys, the errno trailer and
the tensor type numbers on the wire."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from kwasi_runtime.nn.abi import Errno, TensorType, TensorTypeNumbering
from kwasi_runtime.nnrpc.proto import kwasi_nnrpc_pb2 as kw
from kwasi_runtime.nnrpc.proto import wasi_ephemeral_nn_pb2 as nn

ERRNO_KEY = "errno"  # trailing metadata: the wasi-nn errno in decimal, as WasmEdge sends it
SESSION_KEY = "kwasi-session"  # request metadata: the id from Session.Open
AUTH_KEY = "authorization"  # request metadata: "Bearer <token>"

WASMEDGE_PACKAGE = "wasi_ephemeral_nn"
KWASI_PACKAGE = "kwasi.nnrpc.v1"

Req = TypeVar("Req", bound=Message)
Res = TypeVar("Res", bound=Message)


@dataclass(frozen=True)
class Method(Generic[Req, Res]):
    service: str  # full service name
    name: str
    request: type[Req]
    response: type[Res]

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


_GRAPH = f"{WASMEDGE_PACKAGE}.Graph"
_GRAPH_RESOURCE = f"{WASMEDGE_PACKAGE}.GraphResource"
_CONTEXT = f"{WASMEDGE_PACKAGE}.GraphExecutionContextResource"

LOAD_BY_NAME = Method(_GRAPH, "LoadByName", nn.LoadByNameRequest, nn.LoadByNameResult)
LOAD_BY_NAME_WITH_CONFIG = Method(_GRAPH, "LoadByNameWithConfig", nn.LoadByNameWithConfigRequest,
                                  nn.LoadByNameWithConfigResult)
INIT_EXECUTION_CONTEXT = Method(_GRAPH_RESOURCE, "InitExecutionContext", nn.InitExecutionContextRequest,
                                nn.InitExecutionContextResult)
SET_INPUT = Method(_CONTEXT, "SetInput", nn.SetInputRequest, empty_pb2.Empty)
COMPUTE = Method(_CONTEXT, "Compute", nn.ComputeRequest, empty_pb2.Empty)
COMPUTE_SINGLE = Method(_CONTEXT, "ComputeSingle", nn.ComputeRequest, empty_pb2.Empty)
GET_OUTPUT = Method(_CONTEXT, "GetOutput", nn.GetOutputRequest, nn.GetOutputResult)
GET_OUTPUT_SINGLE = Method(_CONTEXT, "GetOutputSingle", nn.GetOutputRequest, nn.GetOutputResult)
FINI_SINGLE = Method(_CONTEXT, "FiniSingle", nn.FiniSingleRequest, empty_pb2.Empty)

OPEN_SESSION = Method(f"{KWASI_PACKAGE}.Session", "Open", kw.OpenRequest, kw.SessionEvent)
LOAD = Method(f"{KWASI_PACKAGE}.Lifecycle", "Load", kw.LoadRequest, kw.LoadResult)
UNLOAD = Method(f"{KWASI_PACKAGE}.Lifecycle", "Unload", kw.UnloadRequest, empty_pb2.Empty)
FINALIZE = Method(f"{KWASI_PACKAGE}.Lifecycle", "FinalizeExecutionContext", kw.FinalizeRequest, empty_pb2.Empty)
GENERATE = Method(f"{KWASI_PACKAGE}.Generation", "Generate", kw.GenerateRequest, kw.GenerateStep)

WASMEDGE_SERVICES = (_GRAPH, _GRAPH_RESOURCE, _CONTEXT)
KWASI_SERVICES = (f"{KWASI_PACKAGE}.Session", f"{KWASI_PACKAGE}.Lifecycle", f"{KWASI_PACKAGE}.Generation")


def errno_from_trailers(metadata: Iterable[Any] | None) -> Errno | None:
    """The errno a peer put in the trailer; a value that is not a known errno (WasmEdge's server sends
    4294967295 when its host call itself fails) is a runtime error. None when there is no trailer."""
    for key, value in metadata or ():
        if key != ERRNO_KEY:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        if not (text.isascii() and text.isdigit()) or len(text) > 10:
            return Errno.RUNTIME_ERROR
        try:
            return Errno(int(text))
        except ValueError:
            return Errno.RUNTIME_ERROR
    return None


# WasmEdge peers put their witx tensor-type number in Tensor.ty (see wasi_ephemeral_nn.proto), so the wire
# numbering is witx, whatever the enum's value names say.
_WIRE_NUMBERING = TensorTypeNumbering.WITX
_TO_WIRE: dict[TensorType, int] = {
    ty: raw for raw in range(16) if (ty := _WIRE_NUMBERING.decode(raw)) is not None
}


def tensor_type_to_wire(ty: TensorType) -> int | None:
    """The number a WasmEdge server expects for `ty`, or None (bf16 has no witx number)."""
    return _TO_WIRE.get(ty)
