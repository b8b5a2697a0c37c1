"""The conformance kit (django_statemodes.testing) over InProc: provider and engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from django_statemodes.backends.inproc import SessionStore
from django_statemodes.providers.inproc import InProcProvider
from django_statemodes.testing import EngineContract, ProviderContract


class TestInProcProvider(ProviderContract):
    @pytest.fixture
    def provider(self) -> Iterator[InProcProvider]:
        yield InProcProvider()


class TestInProcEngine(EngineContract):
    @pytest.fixture
    def engine(self) -> type[SessionStore]:
        return SessionStore


def test_the_first_save_of_a_placeholder_item_sends_session_start() -> None:
    from django_statemodes.signals import session_start
    from django_statemodes.testing import new_key

    key = new_key()
    assert SessionStore.get_provider().create_uninitialized(key, 60)
    started: list[str] = []

    def on_start(sender: object, session_key: str, **kwargs: object) -> None:
        started.append(session_key)

    session_start.connect(on_start)
    try:
        store = SessionStore(key, access="ReadWrite")
        assert store.get("x") is None
        store["x"] = 1
        store.finish(save=True)
        again = SessionStore(key, access="ReadWrite")
        again["x"] = 2
        again.finish(save=True)
    finally:
        session_start.disconnect(on_start)
        SessionStore().delete(key)
    assert started == [key]
