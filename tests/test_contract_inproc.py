"""The conformance kit (django_statemodes.testing) over InProc: provider and engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from django_statemodes.backends.inproc import SessionStore
from django_statemodes.memory import MemoryStore
from django_statemodes.providers.inproc import InProcProvider
from django_statemodes.testing import EngineContract, FakeClock, ProviderContract


class ClockedInProcProvider(InProcProvider):
    """InProc on a MemoryStore whose clock the test advances (MemoryStore takes ``clock=``)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.store = MemoryStore(on_unlock=self._wake, on_evict=self._evicted, clock=clock)


class TestInProcProvider(ProviderContract):
    injected_clock = True

    @pytest.fixture
    def provider(self, clock: FakeClock) -> Iterator[InProcProvider]:
        yield ClockedInProcProvider(clock)


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
