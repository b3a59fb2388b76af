from __future__ import annotations

from collections.abc import Iterator

import pytest

from kwasi_testing.serving import ScriptedTokens, ServerThread


@pytest.fixture
def model() -> ScriptedTokens:
    return ScriptedTokens()


@pytest.fixture
def server(model: ScriptedTokens) -> Iterator[ServerThread]:
    s = ServerThread(model)
    yield s
    s.stop()
