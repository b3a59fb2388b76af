"""Random bodies and parameter values at every endpoint, against the real LLM backend: never a 5xx, every error
in its route's shape, no slot left held, and the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kwasi_runtime.backends.llm import LlmBackend
from kwasi_runtime.nn.abi import ExecutionTarget
from kwasi_testing.gguf_models import random_llama_file
from kwasi_testing.serving import ServerThread, request

POST_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize"]
GET_ROUTES = ["/v1/models", "/v1/models/default", "/v1/models/x", "/version", "/healthz", "/readyz", "/metrics",
              "/v1/nope"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                    st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "bot"]),
                                 "content": st.one_of(st.text(max_size=20), json_values)})
schema = st.one_of(
    st.just({"type": "object"}), st.just({"type": "object", "properties": {"a": {"type": "boolean"}}}),
    st.just({"enum": [1, 2]}), json_values)
tool = st.fixed_dictionaries({"type": st.sampled_from(["function", "other"]), "function": st.one_of(
    json_values, st.fixed_dictionaries({"name": st.sampled_from(["f", "get_x", "bad name", ""]),
                                        "parameters": schema}))})
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.one_of(st.just("default"), json_values),
    "messages": st.one_of(st.lists(message, min_size=1, max_size=3), json_values),
    "prompt": st.one_of(st.text(max_size=20), st.lists(st.integers(-5, 300), max_size=5), json_values),
    "input": st.one_of(st.text(max_size=20), st.lists(st.text(max_size=5), max_size=3), json_values),
    "tokens": st.one_of(st.lists(st.integers(-5, 300), max_size=5), json_values),
    "max_tokens": st.one_of(st.integers(-3, 6), json_values),
    "temperature": st.one_of(st.floats(-1, 3), json_values), "top_p": st.one_of(st.floats(-1, 2), json_values),
    "top_k": st.one_of(st.integers(-2, 50), json_values), "min_p": st.floats(-1, 2),
    "seed": st.one_of(st.integers(-(2**70), 2**70), json_values), "stream": st.one_of(st.booleans(), json_values),
    "stream_options": st.one_of(st.just({"include_usage": True}), json_values),
    "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=5), json_values),
    "logprobs": st.one_of(st.booleans(), st.integers(-1, 6), json_values),
    "top_logprobs": st.one_of(st.integers(-1, 25), json_values),
    "logit_bias": st.one_of(st.dictionaries(st.sampled_from(["1", "65", "x", "99999", "²", "-3"]),
                                            st.floats(-200, 200)),
                            json_values),
    "presence_penalty": st.floats(-3, 3), "frequency_penalty": st.floats(-3, 3),
    "repetition_penalty": st.one_of(st.floats(-1, 5), json_values),
    "tools": st.one_of(st.lists(tool, max_size=2), json_values),
    "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required"]),
                             st.just({"type": "function", "function": {"name": "f"}}), json_values),
    "response_format": st.one_of(st.just({"type": "json_object"}), st.builds(
        lambda s: {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}, schema), json_values),
    "encoding_format": st.one_of(st.sampled_from(["float", "base64"]), json_values),
    "n": st.one_of(st.integers(0, 3), json_values), "echo": json_values, "user": json_values,
}
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    "/v1/completions": {"model": "default", "prompt": "Once", "max_tokens": 4},
    "/v1/embeddings": {"model": "default", "input": "hello"},
    "/tokenize": {"model": "default", "prompt": "hello"},
    "/detokenize": {"model": "default", "tokens": [72, 105]},
}
# A valid body with up to two fields replaced or added (mostly 200s and 400s), or anything at all.
changes = st.lists(st.sampled_from(sorted(FIELDS)), max_size=2, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys}))
def _bodies(route: str) -> st.SearchStrategy[Any]:
    near_valid = changes.map(lambda change: {**VALID[route], **change})
    return st.one_of(near_valid, near_valid, near_valid, changes, json_values, st.binary(max_size=40))


requests = st.sampled_from(POST_ROUTES).flatmap(lambda route: st.tuples(st.just(route), _bodies(route)))


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    path = random_llama_file(tmp_path_factory, seed=2, context_length=512)
    s = ServerThread(LlmBackend().preload([path], ExecutionTarget.CPU), timeout_s=30.0, max_concurrency=2)
    yield s
    s.stop()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=requests)
def test_random_bodies_never_5xx(llm: ServerThread, case: tuple[str, Any]) -> None:
    route, body = case
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = request(llm.url, "POST", route, body=raw, timeout=60)
    assert reply.status < 500, (route, body, reply.body[:400])
    event(f"{route} {reply.status}")
    if reply.status >= 400:
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(GET_ROUTES + POST_ROUTES), method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
       header=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
def test_random_methods_and_headers_never_5xx(llm: ServerThread, route: str, method: str, header: str) -> None:
    reply = request(llm.url, method, route, headers={"X-Request-Id": header, "Content-Type": header}, timeout=60)
    assert reply.status < 500, (method, route, reply.body[:300])


def test_nothing_left_held_and_still_serving(llm: ServerThread) -> None:
    """Runs after the fuzzing above (file order): every slot and gauge is back to zero."""
    llm.wait_idle(30)
    model = llm.server.host.models.get("default")
    usage = model.kv_cache_usage() if model is not None else None
    assert usage is not None and usage.streams == 0 and usage.tokens == 0
    assert llm.server.runner.admission.running == 0
    assert llm.sample("kwasi_requests_running", model="default", module="openai_chat") == 0
    assert llm.sample("kwasi_requests_waiting", model="default", module="openai_chat") == 0
    ok = request(llm.url, "POST", "/v1/chat/completions", body=json.dumps(
        {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode())
    assert ok.status == 200
