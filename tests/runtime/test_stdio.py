"""A guest's stdout and stderr: written by kwasi's own fd_write on the guest's thread (no writable preopen) or
by wasmtime's (a writable preopen); any pointer a guest passes gives an errno, never a host crash."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kwasi_runtime.nn.host import NNHost
from kwasi_runtime.sandbox import Preopen, Sandbox, WasiSetup
from kwasi_runtime.wasm.stdio import ERRNO_BADF, ERRNO_FAULT, ERRNO_INVAL, ERRNO_SUCCESS, IOV_MAX
from kwasi_testing.guests import built_guest, wat_guest

MEMORY = 1 << 16  # stdio_proxy.wat's one page
IOVS_AT, RESULT_AT, DATA_AT = 0x100, 0x80, 0x1000
SANDBOX = Sandbox(wat_guest("stdio_proxy"), NNHost(), cache_dir=None)

# Guest pointers anywhere, but mostly in range: the edges are where bugs live.
pointers = st.one_of(st.integers(0, MEMORY), st.integers(MEMORY - 16, MEMORY + 16), st.integers(0, (1 << 32) - 1))
iovec = st.tuples(pointers, st.one_of(st.integers(0, 64), st.integers(0, (1 << 32) - 1)))


def write(fd: int, iovs: list[tuple[int, int]], nwritten: int = RESULT_AT, *, count: int | None = None,
          dirs: tuple[Preopen, ...] = ()) -> tuple[int, list[bytes], list[bytes], int, bytes]:
    """(errno, stdout writes, stderr writes, the u32 at RESULT_AT, memory before the call) for one fd_write."""
    out: list[bytes] = []
    err: list[bytes] = []
    with SANDBOX.instance(WasiSetup(stdout=out.append, stderr=err.append, dirs=dirs)) as inst:
        memory = inst.exports["memory"]
        fn = inst.exports["p_fd_write"]
        assert isinstance(memory, wasmtime.Memory) and isinstance(fn, wasmtime.Func)
        memory.write(inst.store, bytes(range(256)) * 16, DATA_AT)
        packed = b"".join(struct.pack("<II", ptr & 0xFFFFFFFF, length & 0xFFFFFFFF) for ptr, length in iovs)
        memory.write(inst.store, packed[: MEMORY - IOVS_AT], IOVS_AT)
        before = bytes(memory.read(inst.store, 0, MEMORY))
        rc = fn(inst.store, fd, IOVS_AT, len(iovs) if count is None else count, nwritten)
        assert isinstance(rc, int)
        result = struct.unpack("<I", memory.read(inst.store, RESULT_AT, RESULT_AT + 4))[0]
    return rc, out, err, result, before


def test_stdout_and_stderr_reach_their_sinks_on_the_guests_own_thread() -> None:
    threads: list[int] = []
    out: list[bytes] = []

    def stdout(data: bytes) -> None:
        threads.append(threading.get_ident())
        out.append(data)

    with SANDBOX.instance(WasiSetup(stdout=stdout, stderr=out.append)) as inst:
        memory, fn = inst.exports["memory"], inst.exports["p_fd_write"]
        assert isinstance(memory, wasmtime.Memory) and isinstance(fn, wasmtime.Func)
        memory.write(inst.store, b"hello, world", DATA_AT)
        memory.write(inst.store, struct.pack("<IIII", DATA_AT, 5, DATA_AT + 5, 7), IOVS_AT)
        assert fn(inst.store, 1, IOVS_AT, 2, RESULT_AT) == ERRNO_SUCCESS  # both iovecs in one call
        assert struct.unpack("<I", memory.read(inst.store, RESULT_AT, RESULT_AT + 4))[0] == 12
        assert fn(inst.store, 2, IOVS_AT, 1, RESULT_AT) == ERRNO_SUCCESS
    assert out == [b"hello, world", b"hello"]
    assert threads == [threading.get_ident()]  # not a wasmtime worker thread: no wake-up per write


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fd=st.sampled_from([0, 1, 2, 3, 7, -1]), iovs=st.lists(iovec, max_size=6),
       nwritten=st.one_of(st.just(RESULT_AT), pointers))
def test_any_fd_write_gives_the_bytes_or_an_errno_and_writes_nothing(fd: int, iovs: list[tuple[int, int]],
                                                                     nwritten: int) -> None:
    rc, out, err, result, before = write(fd, iovs, nwritten)
    in_memory = all(p + n <= MEMORY for p, n in iovs) and IOVS_AT + 8 * len(iovs) <= MEMORY
    if fd not in (1, 2):
        assert (rc, out, err) == (ERRNO_BADF, [], [])
    elif not in_memory or nwritten + 4 > MEMORY:
        assert (rc, out, err) == (ERRNO_FAULT, [], [])  # checked whole before anything is written
    else:
        data = b"".join(before[p: p + n] for p, n in iovs)
        assert rc == ERRNO_SUCCESS
        assert (out if fd == 1 else err) == ([data] if data else [])
        assert (err if fd == 1 else out) == []
        if nwritten == RESULT_AT:
            assert result == len(data)


def test_more_iovecs_than_iov_max_is_einval() -> None:
    assert write(1, [(DATA_AT, 1)] * 4, count=IOV_MAX + 1)[:3] == (ERRNO_INVAL, [], [])
    assert write(1, [(DATA_AT, 1)] * 4, count=0xFFFFFFFF)[:3] == (ERRNO_INVAL, [], [])


def test_a_writable_preopen_keeps_wasmtimes_fd_write(tmp_path: Path) -> None:
    """Files the guest may write need WASI's own fd_write; stdout still reaches the sink (through wasmtime's
    output thread), in a short write of the first iovec as wasmtime makes it."""
    rc, out, _, result, before = write(1, [(DATA_AT, 5), (DATA_AT + 5, 5)],
                                       dirs=(Preopen(tmp_path, "/d", writable=True),))
    assert rc == ERRNO_SUCCESS and out == [before[DATA_AT: DATA_AT + 5]] and result == 5


def test_a_c_guest_prints_through_either_path(tmp_path: Path) -> None:
    probe = Sandbox(built_guest("fs_probe"), NNHost(), cache_dir=None)
    for dirs in ([Preopen(tmp_path, "/data")], [Preopen(tmp_path, "/data", writable=True)]):
        err: list[bytes] = []
        result = probe.run(WasiSetup(args=["fs_probe", "write", "/data/out.txt"], dirs=dirs, stderr=err.append))
        assert (result.exit_code == 0) == dirs[0].writable
        assert dirs[0].writable or b"write /data/out.txt" in b"".join(err)
