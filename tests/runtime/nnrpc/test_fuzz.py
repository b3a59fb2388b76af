"""Random requests to every method never crash the server or leak a KV slot: each gets a clean answer (a reply,
or UNKNOWN with an errno trailer), and afterwards the server still generates and holds nothing once its
clients are gone."""

from __future__ import annotations

from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kwasi_runtime.nnrpc import wire
from kwasi_runtime.nnrpc.proto import kwasi_nnrpc_pb2 as kw
from kwasi_runtime.nnrpc.proto import wasi_ephemeral_nn_pb2 as nn
from kwasi_runtime.nnrpc.server.app import NNRpcServer
from kwasi_testing.nnrpc import raw_unary

UNARY = [wire.LOAD_BY_NAME, wire.LOAD_BY_NAME_WITH_CONFIG, wire.INIT_EXECUTION_CONTEXT, wire.SET_INPUT,
         wire.COMPUTE, wire.COMPUTE_SINGLE, wire.GET_OUTPUT, wire.GET_OUTPUT_SINGLE, wire.FINI_SINGLE, wire.LOAD,
         wire.UNLOAD, wire.FINALIZE]
handles = st.integers(0, 3) | st.integers(0, 2**32 - 1)
names = st.sampled_from(["default", "random", ""]) | st.text(max_size=8)
configs = st.sampled_from(["{}", '{"temp": 0}', '{"ctx-size": 8}', "{", "[1]", '{"temp": "hot"}']) | st.text(max_size=8)
tensors = st.builds(lambda dims, ty, data: nn.Tensor(dimensions=dims, ty=ty, data=data),
                    st.lists(st.integers(0, 2**32 - 1), max_size=3), st.integers(0, 6), st.binary(max_size=32))
MESSAGES = {
    wire.LOAD_BY_NAME: st.builds(lambda n: nn.LoadByNameRequest(name=n), names),
    wire.LOAD_BY_NAME_WITH_CONFIG: st.builds(lambda n, c: nn.LoadByNameWithConfigRequest(name=n, config=c),
                                             names, configs),
    wire.INIT_EXECUTION_CONTEXT: st.builds(lambda h: nn.InitExecutionContextRequest(resource_handle=h), handles),
    wire.SET_INPUT: st.builds(lambda h, i, t: nn.SetInputRequest(resource_handle=h, index=i, tensor=t),
                              handles, st.integers(0, 2), tensors),
    wire.COMPUTE: st.builds(lambda h: nn.ComputeRequest(resource_handle=h), handles),
    wire.COMPUTE_SINGLE: st.builds(lambda h: nn.ComputeRequest(resource_handle=h), handles),
    wire.GET_OUTPUT: st.builds(lambda h, i: nn.GetOutputRequest(resource_handle=h, index=i), handles,
                               st.integers(0, 3)),
    wire.GET_OUTPUT_SINGLE: st.builds(lambda h, i: nn.GetOutputRequest(resource_handle=h, index=i), handles,
                                      st.integers(0, 3)),
    wire.FINI_SINGLE: st.builds(lambda h: nn.FiniSingleRequest(resource_handle=h), handles),
    wire.LOAD: st.builds(lambda b, e, t: kw.LoadRequest(builders=b, encoding=e, target=t),
                         st.lists(st.binary(max_size=16), max_size=2), st.integers(0, 16), st.integers(0, 4)),
    wire.UNLOAD: st.builds(lambda h: kw.UnloadRequest(graph_handle=h), handles),
    wire.FINALIZE: st.builds(lambda h: kw.FinalizeRequest(ctx_handle=h), handles),
}
calls = st.lists(st.one_of(
    *(st.tuples(st.just(m), msg.map(lambda x: x.SerializeToString())) for m, msg in MESSAGES.items()),
    st.tuples(st.sampled_from(UNARY), st.binary(max_size=40)),
), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=calls)
def test_random_calls_get_clean_answers(server: NNRpcServer, sequence: list[tuple[Any, bytes]]) -> None:
    with grpc.insecure_channel(server.config.uri) as channel:
        for method, payload in sequence:
            try:
                raw_unary(channel, method.path)(payload, timeout=30)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNKNOWN, (method.name, e)
                assert wire.errno_from_trailers(e.trailing_metadata()) is not None, (method.name, e)
                assert "internal error" not in str(e.details()), (method.name, e)  # no exception escaped a handler
    server.sessions.end_all()  # as if every client had gone
    for name in ("default", "random"):
        model = server.models.get(name)
        usage = model.kv_cache_usage() if model else None
        assert usage is not None and usage.streams == 0, name
    assert len(server.sessions) == 0
