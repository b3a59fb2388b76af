"""Random pointers, lengths and handles at every host function: always an errno, never a crash or trap."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kwasi_runtime.backends.torchscript import TorchScriptBackend
from kwasi_runtime.nn.abi import Errno, ExecutionTarget
from kwasi_runtime.nn.host import SIGNATURES, HostOptions, NNHost
from kwasi_runtime.nn.models import NamedModels
from kwasi_runtime.sandbox import Sandbox, WasiSetup
from kwasi_testing.guests import Proxy, wat_guest
from kwasi_testing.models import TinyModel

MEMORY = 16 * 65536
VALID = {int(e) for e in Errno}

# Values a buggy or hostile guest would pass: edges of memory, of i32, small handles, anything.
i32 = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.sampled_from([0, 1, 3, 4, 8, 20, MEMORY - 20, MEMORY - 4, MEMORY - 1, MEMORY, MEMORY + 1,
                     2**31 - 1, -1, -(2**31)]),
    st.integers(min_value=0, max_value=8),
    st.integers(min_value=0, max_value=MEMORY),
)
calls = st.lists(
    st.sampled_from(sorted(SIGNATURES)).flatmap(
        lambda name: st.tuples(st.just(name), st.lists(i32, min_size=SIGNATURES[name], max_size=SIGNATURES[name]))
    ),
    min_size=1,
    max_size=12,
)


def fuzz(tiny_model: TinyModel, fast: bool, compat: bool, sequence: list[tuple[str, list[int]]]) -> None:
    models = NamedModels()
    models.register("m", TorchScriptBackend().preload([tiny_model.path], ExecutionTarget.CPU))
    host = NNHost(models, options=HostOptions(wasmedge_compat=compat))
    sandbox = Sandbox(wat_guest("proxy"), host, cache_dir=None, fast_calls=fast)
    with sandbox.instance(WasiSetup()) as inst:
        p = Proxy(inst)
        # Some real state, so handles 0 and 1 exist and memory holds a valid name and tensor.
        name = p.alloc(b"m")
        assert p.call("load_by_name", name, 1, 64) == 0
        assert p.call("init_execution_context", 0, 64) == 0
        p.tensor((1, 3, 2, 2), 1, tiny_model.input.numpy().tobytes())
        for fn, args in sequence:
            rc = p.call(fn, *args)
            assert rc in VALID, (fn, args, rc)
        # The host still works afterwards (outputs may have landed anywhere the guest pointed, so
        # the name is written again first).
        p.memory.write(inst.store, b"m", name)
        assert p.call("load_by_name", name, 1, 64) == 0
        assert p.call("init_execution_context", p.u32(64), 64) == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=calls)
def test_random_calls_raw_path(tiny_model: TinyModel, sequence: list[tuple[str, list[int]]]) -> None:
    fuzz(tiny_model, fast=True, compat=False, sequence=sequence)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=calls)
def test_random_calls_public_path_compat(tiny_model: TinyModel, sequence: list[tuple[str, list[int]]]) -> None:
    fuzz(tiny_model, fast=False, compat=True, sequence=sequence)
