"""Engines for middleware tests: InProc with a provider that counts its calls, and a store
that is down (what a StateServer, SQL or Redis outage looks like to the core)."""

from __future__ import annotations

import functools
import inspect
from collections import Counter
from collections.abc import Callable
from typing import Any

from django_statemodes.backends.inproc import SessionStore as InProcStore
from django_statemodes.conf import conf
from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.providers.base import ExpiredItem, SessionStateProvider
from django_statemodes.providers.inproc import InProcProvider

calls: Counter[str] = Counter()


#: Every provider operation, sync and async (close() is housekeeping, not an operation).
OPERATIONS = (
    "get",
    "get_exclusive",
    "set_and_release",
    "release",
    "remove",
    "create_uninitialized",
    "purge_expired",
    "wait_for_release",
    "aget",
    "aget_exclusive",
    "aset_and_release",
    "arelease",
    "aremove",
    "await_for_release",
)


def _counted(name: str) -> Callable[..., Any]:
    inner = getattr(InProcProvider, name)
    if inspect.iscoroutinefunction(inner):

        async def acounted(self: InProcProvider, *args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return await inner(self, *args, **kwargs)

        return functools.wraps(inner)(acounted)

    def counted(self: InProcProvider, *args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return inner(self, *args, **kwargs)

    return functools.wraps(inner)(counted)


class CountingProvider(InProcProvider):
    """InProc, counting every provider operation by name (see ``OPERATIONS``).

    InProc's async twins call the sync methods, so an async call counts under both names
    ("aget" and "get"): a test that asserts no store I/O sees either.
    """


for _name in OPERATIONS:
    setattr(CountingProvider, _name, _counted(_name))


class SessionStore(InProcStore):
    """InProc on its own store, so tests may fill, lock or empty it without touching the real
    engine's sessions. Like InProc, its bound follows STATEMODES_INPROC_MAX_SESSIONS and its
    sweeps and evictions send session_end."""

    @classmethod
    def create_provider(cls) -> SessionStateProvider:
        _counting.store.max_items = conf.STATEMODES_INPROC_MAX_SESSIONS
        return _counting


def _send_end(item: ExpiredItem, reason: str) -> None:
    SessionStore._expired(item, reason)


_counting = CountingProvider(on_expired=_send_end)


def empty_counting_store() -> None:
    """Remove every session of the counting engine's store (a test's clean start)."""
    _counting.store.purge_expired()
    for key, *_ in _counting.store.snapshot():
        _counting.store.remove(key)
    # snapshot() leaves out create_uninitialized() placeholders: fail loudly if one is left.
    assert len(_counting.store) == 0
    calls.clear()


class DownProvider(InProcProvider):
    """Every call fails as an unreachable store does."""

    def get_exclusive(self, session_key: str) -> Any:
        raise SessionStoreUnavailable(
            "Unable to make the session state request to the test store.",
            setting="STATEMODES_TEST_STORE",
        )

    get = get_exclusive
