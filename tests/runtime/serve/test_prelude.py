"""The CGI prelude rule, byte by byte: however stdout is split into writes, the decision is the same."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kwasi_runtime.serve.wagi import DEFAULT_CONTENT_TYPE, Head, PreludeParser

CASES = [
    (b"Content-Type: text/html\n\n<p>hi</p>", 200, "text/html", b"<p>hi</p>"),
    (b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope", 404, "text/plain", b"nope"),
    (b"Location: /elsewhere\n\n", 302, "application/octet-stream", b""),
    (b"Status: 204\n", 204, "application/octet-stream", b""),  # EOF ends a header-only response
    (b"Paris is the capital", 200, DEFAULT_CONTENT_TYPE, b"Paris is the capital"),
    (b"Note: not a CGI header\n\nbody", 200, DEFAULT_CONTENT_TYPE, b"Note: not a CGI header\n\nbody"),
    (b"Content-Type: x\nthen text", 200, DEFAULT_CONTENT_TYPE, b"Content-Type: x\nthen text"),
    (b"", 200, DEFAULT_CONTENT_TYPE, b""),
]


def decide(writes: list[bytes]) -> tuple[Head, bytes]:
    parser = PreludeParser()
    body = b""
    decided = None
    for w in writes:
        if decided is None:
            decided = parser.feed(w)
        else:
            body += w
    head, first = decided if decided is not None else parser.finish()
    return head, first + body


@pytest.mark.parametrize(("out", "status", "ctype", "body"), CASES)
def test_prelude(out: bytes, status: int, ctype: str, body: bytes) -> None:
    head, got = decide([out])
    assert head.status == status
    assert dict(head.headers)["Content-Type"] == ctype
    assert got == body


@given(st.sampled_from(CASES), st.lists(st.integers(0, 60), max_size=6))
def test_split_writes_decide_the_same(case: tuple[bytes, int, str, bytes], cuts: list[int]) -> None:
    out = case[0]
    points = sorted({min(c, len(out)) for c in cuts})
    writes = [out[a:b] for a, b in zip([0, *points], [*points, len(out)], strict=True)]
    head, got = decide(writes)
    assert (head.status, got) == (case[1], case[3])


def test_hop_by_hop_headers_from_the_guest_are_dropped() -> None:
    head, _ = decide([b"Content-Type: a\nContent-Length: 3\nTransfer-Encoding: gzip\nX-Ok: 1\n\nabcdef"])
    assert head.headers == [("Content-Type", "a"), ("X-Ok", "1")]


@pytest.mark.parametrize(("out", "status", "ctype", "body"), CASES)
def test_every_two_way_split_decides_the_same(out: bytes, status: int, ctype: str, body: bytes) -> None:
    """Exhaustive over split points (hypothesis found a "\\r" | "\\n" split of the blank line once)."""
    for cut in range(len(out) + 1):
        head, got = decide([out[:cut], out[cut:]])
        assert (head.status, got) == (status, body), cut
