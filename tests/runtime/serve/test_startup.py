"""Start-up refuses a guest that could never serve a request, and says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from kwasi_runtime.sandbox import GuestStartError
from kwasi_testing.guests import wat_guest
from kwasi_testing.serving import ServerThread


def test_a_guest_that_traps_while_instantiated_stops_start_up(tmp_path: Path) -> None:
    module = tmp_path / "start_trap.wasm"
    module.write_bytes(wat_guest("start_trap"))
    with pytest.raises(GuestStartError, match=r"start_trap\.wasm cannot be instantiated: .*unreachable"):
        ServerThread(module=module, cache_dir=None)


def test_guests_that_instantiate_start_normally() -> None:
    s = ServerThread()  # the built chat and WAGI guests
    try:
        assert s.server.ready
    finally:
        s.stop()
