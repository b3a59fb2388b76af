"""Shared fixtures; the helpers they build on live in kwasi_testing.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest

from kwasi_runtime.nn.host import NNHost
from kwasi_runtime.sandbox import GuestInstance, Sandbox, WasiSetup
from kwasi_testing.guests import Proxy, wat_guest
from kwasi_testing.models import TinyModel, make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return make_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., Proxy]]:
    """`proxy_factory(host)` → a Proxy in a fresh instance; instances close at test end."""
    opened: list[AbstractContextManager[GuestInstance]] = []

    def make(host: NNHost, fast: bool = True) -> Proxy:
        sandbox = Sandbox(wat_guest("proxy"), host, cache_dir=None, fast_calls=fast)
        cm = sandbox.instance(WasiSetup())
        opened.append(cm)
        return Proxy(cm.__enter__())

    yield make
    for cm in reversed(opened):
        cm.__exit__(None, None, None)
