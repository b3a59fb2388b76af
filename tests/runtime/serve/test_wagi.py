"""The WAGI front: request → environment and stdin, guest stdout → status, headers and a streamed body."""

from __future__ import annotations

import http.client
import time

from kwasi_testing.serving import ServerThread, request


def test_request_reaches_the_guest_as_env_and_stdin(server: ServerThread) -> None:
    reply = request(server.url, "POST", "/hello/w%C3%B6rld?x=1&y=two", body=b"ping\x00pong",
                    headers={"X-Custom-Thing": "abc", "Content-Type": "text/x-test"})
    assert reply.status == 200
    assert reply.headers["x-guest"] == "wagi_echo"
    assert reply.headers["content-type"] == "text/plain"
    lines = reply.body.split(b"\n")
    assert lines[0] == "POST /hello/wörld?x=1&y=two".encode()
    env = dict(line.decode().split("=", 1) for line in lines[1:] if b"=" in line and not line.startswith(b"body:"))
    assert env["REQUEST_METHOD"] == "POST"
    assert env["QUERY_STRING"] == "x=1&y=two"
    assert env["X_RAW_PATH_INFO"] == "/hello/w%C3%B6rld"
    assert env["HTTP_X_CUSTOM_THING"] == "abc"
    assert env["CONTENT_TYPE"] == "text/x-test"
    assert env["CONTENT_LENGTH"] == "9"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert "PATH" not in env and "HOME" not in env  # nothing of the host's environment leaks
    assert reply.body.endswith(b"body:ping\x00pong")


def test_status_from_the_prelude(server: ServerThread) -> None:
    reply = request(server.url, path="/x?mode=status")
    assert (reply.status, reply.body) == (418, b"teapot\n")


def test_output_without_prelude_is_a_plain_body(server: ServerThread) -> None:
    reply = request(server.url, path="/x?mode=plain")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.body == b"plain body\n"


def test_trap_is_500_with_the_reason(server: ServerThread) -> None:
    reply = request(server.url, path="/x?mode=trap")
    assert reply.status == 500
    assert b"unreachable" in reply.body
    server.wait_idle()
    assert server.sample("kwasi_guest_traps_total", model="", module="wagi_echo", reason="unreachable") == 1
    assert server.sample("kwasi_requests_total", model="", module="wagi_echo", status="500",
                         finish_reason="error") == 1


def test_exit_code_without_output_is_500(server: ServerThread) -> None:
    reply = request(server.url, path="/x?mode=exit")
    assert reply.status == 500
    assert b"code 3" in reply.body


def test_deadline_is_504() -> None:
    s = ServerThread(timeout_s=0.3)
    try:
        start = time.monotonic()
        reply = request(s.url, path="/x?mode=spin")
        assert reply.status == 504
        assert time.monotonic() - start < 5
        s.wait_idle()
        assert s.sample("kwasi_guest_traps_total", model="", module="wagi_echo", reason="interrupt") == 1
    finally:
        s.stop()


def test_body_limit_is_413() -> None:
    s = ServerThread(max_body_bytes=100)
    try:
        assert request(s.url, "POST", "/x", body=b"a" * 100).status == 200
        assert request(s.url, "POST", "/x", body=b"a" * 101).status == 413
        assert request(s.url, "POST", "/v1/chat/completions", body=b"a" * 101).json()["error"]["message"]
    finally:
        s.stop()


def test_stdout_streams_chunk_by_chunk(server: ServerThread) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    start = time.monotonic()
    conn.request("GET", "/s?mode=stream&n=4&ms=150")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Transfer-Encoding") == "chunked"
    arrivals = []
    for _ in range(4):
        line = resp.readline()
        arrivals.append((line, time.monotonic() - start))
    assert [a[0] for a in arrivals] == [b"chunk %d\n" % i for i in range(4)]
    # Each line arrives when written, not at the end (4 x 150 ms).
    assert arrivals[0][1] < 0.45
    assert arrivals[3][1] - arrivals[0][1] > 0.3
    conn.close()


def test_reserved_paths(server: ServerThread) -> None:
    assert request(server.url, path="/healthz").status == 200
    assert request(server.url, path="/readyz").status == 200
    assert request(server.url, path="/metrics").status == 200
    reply = request(server.url, path="/v1/nope")
    assert reply.status == 404 and "error" in reply.json()
    assert request(server.url, path="/healthzz").body.startswith(b"GET /healthzz")  # not reserved: the guest's


def test_readyz_is_503_until_prepared() -> None:
    s = ServerThread(prepare=False)
    try:
        assert request(s.url, path="/healthz").status == 200
        assert request(s.url, path="/readyz").status == 503
        assert request(s.url, path="/anything").status == 503
        s.server.prepare()
        assert request(s.url, path="/readyz").status == 200
        assert request(s.url, path="/anything").status == 200
    finally:
        s.stop()
