"""Bad input is a 4xx in OpenAI's shape, counted, and quiet: never a 5xx, never a server traceback."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import openai
import pytest

from kwasi_testing.serving import ScriptedTokens, ServerThread, request

LABELS = {"model": "", "module": "openai_chat"}
CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("body", "param"), [
    (b'{"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}",
     None),  # past Python's int-string limit
    (b"[" * 100_000 + b"]" * 100_000, None),  # deeper than the JSON parser's recursion
    (json.dumps({**CHAT, "seed": 2**70}).encode(), "seed"),  # past the sampler's 64-bit generator
    (json.dumps({**CHAT, "max_tokens": 10**9}).encode(), "max_tokens"),  # past the model's context
])
def test_bad_bodies_are_400s_and_counted(server: ServerThread, body: bytes, param: str | None) -> None:
    reply = request(server.url, "POST", "/v1/chat/completions", body=body)
    assert reply.status == 400, reply.body[:300]
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    server.wait_idle()
    assert server.sample("kwasi_requests_total", **LABELS, status="400", finish_reason="error") == 1


def test_max_tokens_past_the_context_is_a_context_length_error(server: ServerThread) -> None:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as client, \
            pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=10**9, stream=True)
    assert e.value.code == "context_length_exceeded"


def test_a_64_kb_header_is_a_quiet_400(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reply = request(server.url, "GET", "/healthz", headers={"X-Big": "a" * 65536})
    assert reply.status == 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert request(server.url, path="/healthz").status == 200  # and the server goes on


def test_a_garbage_request_line_is_quiet(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /" + b"x" * 70000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert b" 400 " in sock.recv(64)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_429_carries_retry_after() -> None:
    s = ServerThread(ScriptedTokens(delay_s=0.2, endless=True), max_concurrency=1, max_queue=0)
    try:
        first = threading.Thread(target=request, args=(s.url, "POST", "/v1/chat/completions",
                                                      json.dumps({**CHAT, "max_tokens": 5}).encode()))
        first.start()
        while s.server.runner.admission.running < 1:
            time.sleep(0.005)
        reply = request(s.url, "POST", "/v1/chat/completions", body=json.dumps(CHAT).encode())
        assert reply.status == 429
        assert reply.headers["retry-after"] == "1"
        assert reply.json()["error"]["type"] == "server_error"
        first.join(10)
    finally:
        s.stop()


def test_api_key() -> None:
    s = ServerThread(ScriptedTokens(), api_key="sekret")
    try:
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key="wrong", max_retries=0) as bad_client, \
                pytest.raises(openai.AuthenticationError) as e:
            bad_client.models.list()
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
        assert request(s.url, "POST", "/v1/chat/completions", body=json.dumps(CHAT).encode()).status == 401
        assert request(s.url, path="/tokenize").status == 401
        assert request(s.url, path="/anything-wagi").status == 401  # the --module guest is behind it too
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert request(s.url, path=open_path).status == 200, open_path
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key="sekret", max_retries=0) as good:
            assert good.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=2).choices[0].message.content
    finally:
        s.stop()
