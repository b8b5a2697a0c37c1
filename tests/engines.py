"""Engines for middleware tests: InProc with a provider that counts its calls, and a store
that is down (what a StateServer, SQL or Redis outage looks like to the core)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django_statemodes.backends.inproc import InProcProvider
from django_statemodes.backends.inproc import SessionStore as InProcStore
from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.providers.base import SessionStateProvider

calls: Counter[str] = Counter()


class CountingProvider(InProcProvider):
    """InProc, counting every store operation."""

    def get(self, session_key: str) -> Any:
        calls["get"] += 1
        return super().get(session_key)

    def get_exclusive(self, session_key: str) -> Any:
        calls["get_exclusive"] += 1
        return super().get_exclusive(session_key)

    def set_and_release(self, session_key: str, data: Any, **kwargs: Any) -> bool:
        calls["set_and_release"] += 1
        return super().set_and_release(session_key, data, **kwargs)

    def release(self, session_key: str, lock_id: int) -> None:
        calls["release"] += 1
        super().release(session_key, lock_id)

    def remove(self, session_key: str, lock_id: int | None = None) -> bool:
        calls["remove"] += 1
        return super().remove(session_key, lock_id)


_counting = CountingProvider()


class SessionStore(InProcStore):
    @classmethod
    def create_provider(cls) -> SessionStateProvider:
        return _counting


class DownProvider(InProcProvider):
    """Every call fails as an unreachable store does."""

    def get_exclusive(self, session_key: str) -> Any:
        raise SessionStoreUnavailable(
            "Unable to make the session state request to the test store.",
            setting="STATEMODES_TEST_STORE",
        )

    get = get_exclusive  # type: ignore[assignment]
