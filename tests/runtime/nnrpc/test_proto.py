"""The protocol files: the committed stubs are what protoc makes from them, and the WasmEdge wire is WasmEdge's.

The expected table is the wire as WasmEdge's `lib/wasi_nn_rpc/wasi_ephemeral_nn.proto` defines it (0.14.1 to
0.17.x and master): package, services, methods, messages, field names, numbers and types. Anything extra or
different would break a WasmEdge peer, so the check is exact.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf.descriptor import FieldDescriptor
from grpc_tools import protoc

from kwasi_runtime.nnrpc.proto import kwasi_nnrpc_pb2, wasi_ephemeral_nn_pb2

PROTO_DIR = Path(wasi_ephemeral_nn_pb2.__file__).parent

U32, BYTES, STRING, ENUM, MESSAGE = (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_BYTES,
                                     FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_ENUM,
                                     FieldDescriptor.TYPE_MESSAGE)

WASMEDGE_MESSAGES: dict[str, list[tuple[str, int, int, bool]]] = {  # name, number, type, repeated
    "Tensor": [("dimensions", 1, U32, True), ("ty", 2, ENUM, False), ("data", 3, BYTES, False)],
    "LoadByNameRequest": [("name", 1, STRING, False)],
    "LoadByNameResult": [("graph_handle", 1, U32, False)],
    "LoadByNameWithConfigRequest": [("name", 1, STRING, False), ("config", 2, STRING, False)],
    "LoadByNameWithConfigResult": [("graph_handle", 1, U32, False)],
    "InitExecutionContextRequest": [("resource_handle", 1, U32, False)],
    "InitExecutionContextResult": [("ctx_handle", 1, U32, False)],
    "SetInputRequest": [("resource_handle", 1, U32, False), ("index", 2, U32, False), ("tensor", 3, MESSAGE, False)],
    "ComputeRequest": [("resource_handle", 1, U32, False)],
    "GetOutputRequest": [("resource_handle", 1, U32, False), ("index", 2, U32, False)],
    "GetOutputResult": [("data", 1, BYTES, False)],
    "FiniSingleRequest": [("resource_handle", 1, U32, False)],
}
EMPTY = "google.protobuf.Empty"
WASMEDGE_SERVICES: dict[str, dict[str, tuple[str, str]]] = {
    "Graph": {"LoadByName": ("LoadByNameRequest", "LoadByNameResult"),
              "LoadByNameWithConfig": ("LoadByNameWithConfigRequest", "LoadByNameWithConfigResult")},
    "GraphResource": {"InitExecutionContext": ("InitExecutionContextRequest", "InitExecutionContextResult")},
    "GraphExecutionContextResource": {
        "SetInput": ("SetInputRequest", EMPTY), "Compute": ("ComputeRequest", EMPTY),
        "ComputeSingle": ("ComputeRequest", EMPTY), "GetOutput": ("GetOutputRequest", "GetOutputResult"),
        "GetOutputSingle": ("GetOutputRequest", "GetOutputResult"), "FiniSingle": ("FiniSingleRequest", EMPTY)},
}


def test_committed_stubs_are_what_protoc_makes(tmp_path: Path) -> None:
    for proto in sorted(PROTO_DIR.glob("*.proto")):
        shutil.copy(proto, tmp_path)
    protos = sorted(p.name for p in tmp_path.glob("*.proto"))
    assert protos == ["kwasi_nnrpc.proto", "wasi_ephemeral_nn.proto"]
    include = str(Path(protoc.__file__).parent / "_proto")
    rc = protoc.main(["protoc", f"-I{tmp_path}", f"-I{include}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
                      *(str(tmp_path / p) for p in protos)])
    assert rc == 0
    for made in sorted(tmp_path.glob("*_pb2.py*")):
        committed = PROTO_DIR / made.name
        assert committed.read_bytes() == made.read_bytes(), f"{committed} is stale: run `make protos`"


def test_wasmedge_wire_is_exactly_wasmedges() -> None:
    file = wasi_ephemeral_nn_pb2.DESCRIPTOR
    assert file.package == "wasi_ephemeral_nn"
    assert set(file.message_types_by_name) == set(WASMEDGE_MESSAGES)
    for name, fields in WASMEDGE_MESSAGES.items():
        message = file.message_types_by_name[name]
        got = [(f.name, f.number, f.type, f.is_repeated) for f in message.fields]
        assert got == fields, name
    ty = file.message_types_by_name["Tensor"].fields_by_name["ty"].enum_type
    assert ty is not None and ty.full_name == "wasi_ephemeral_nn.TensorType"
    assert [(v.name, v.number) for v in ty.values] == [
        ("FP16", 0), ("FP32", 1), ("FP64", 2), ("BF16", 3), ("U8", 4), ("I32", 5), ("I64", 6)]
    assert file.message_types_by_name["Tensor"].fields_by_name["dimensions"].is_packed
    tensor = file.message_types_by_name["SetInputRequest"].fields_by_name["tensor"].message_type
    assert tensor is not None and tensor.name == "Tensor"
    assert set(file.services_by_name) == set(WASMEDGE_SERVICES)
    for service, signatures in WASMEDGE_SERVICES.items():
        desc = file.services_by_name[service]
        methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in desc.methods}
        assert methods == {n: tuple(t if t == EMPTY else f"wasi_ephemeral_nn.{t}" for t in io)
                           for n, io in signatures.items()}, service
        assert not any(m.client_streaming or m.server_streaming for m in desc.methods)


def test_kwasi_additions_live_in_their_own_package() -> None:
    file = kwasi_nnrpc_pb2.DESCRIPTOR
    assert file.package == "kwasi.nnrpc.v1"
    assert set(file.services_by_name) == {"Session", "Lifecycle", "Generation"}
    generate = file.services_by_name["Generation"].methods_by_name["Generate"]
    assert generate.client_streaming and generate.server_streaming
