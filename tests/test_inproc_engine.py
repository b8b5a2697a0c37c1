"""InProc as an engine: the lazy sweep, the memory bound and its eviction, a full store.

The sweep runs on the real engine. The bound is tested on the counting engine (tests/engines.py),
InProc on a store of its own, because filling a store to a small bound evicts whatever else is in
it: here only this module's sessions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import AsyncClient, Client, override_settings

from django_statemodes.backends import inproc
from django_statemodes.providers import inproc as inproc_provider
from django_statemodes.signals import session_end
from tests import engines

COOKIE = settings.SESSION_COOKIE_NAME

Ended = list[tuple[str, Any, str]]


@pytest.fixture
def ended() -> Iterator[Ended]:
    """Every session_end sent during the test, as (session_key, data, reason)."""
    received: Ended = []

    def receiver(sender: Any, session_key: str, data: Any, reason: str, **kwargs: Any) -> None:
        received.append((session_key, data, reason))

    session_end.connect(receiver)
    yield received
    session_end.disconnect(receiver)


def test_the_lazy_sweep_on_get_sends_session_end_expired_with_the_data(ended: Ended) -> None:
    store = inproc.SessionStore()
    store["name"] = "Ada"
    store.set_expiry(1)
    store.save()
    key = store.session_key
    assert key is not None
    provider = inproc.SessionStore.get_provider()
    # Sleep past the expiry and the sweep interval: the next get is due to sweep.
    time.sleep(max(1.1, inproc_provider.SWEEP_INTERVAL + 0.1))
    assert [e for e in ended if e[0] == key] == []  # expiry alone sends nothing
    assert provider.get("0" * 32) is None  # any get runs the sweep
    assert [e for e in ended if e[0] == key] == [
        (key, {"name": "Ada", "_session_expiry": 1}, "expired")
    ]
    # Swept, not merely hidden: a purge finds nothing left of it to end again.
    inproc.SessionStore.purge()
    assert [e[0] for e in ended].count(key) == 1


@override_settings(STATEMODES_INPROC_MAX_SESSIONS=7)
def test_the_engine_bound_follows_the_setting() -> None:
    provider = inproc.SessionStore.get_provider()
    assert isinstance(provider, inproc_provider.InProcProvider)
    assert provider.store.max_items == 7


@pytest.fixture
def counting_store() -> Iterator[type[engines.SessionStore]]:
    engines.empty_counting_store()
    yield engines.SessionStore
    engines.empty_counting_store()


def make(store_class: type[engines.SessionStore], name: str, expiry: int) -> str:
    store = store_class()
    store["name"] = name
    store.set_expiry(expiry)
    store.save()
    assert store.session_key is not None
    return store.session_key


@override_settings(STATEMODES_INPROC_MAX_SESSIONS=3)
def test_past_the_bound_the_unlocked_session_nearest_to_expiry_is_evicted(
    counting_store: type[engines.SessionStore], ended: Ended
) -> None:
    late = make(counting_store, "late", 300)
    soonest = make(counting_store, "soonest", 100)
    middle = make(counting_store, "middle", 200)
    holder = counting_store(soonest, access="ReadWrite")
    assert holder["name"] == "soonest"  # locked now: never evicted

    fourth = make(counting_store, "fourth", 400)
    assert ended == [(middle, {"name": "middle", "_session_expiry": 200}, "evicted")]
    assert not counting_store().exists(middle)
    assert all(counting_store().exists(key) for key in (late, soonest, fourth))

    holder.finish(save=False)
    ended.clear()
    make(counting_store, "fifth", 500)
    assert ended == [(soonest, {"name": "soonest", "_session_expiry": 100}, "evicted")]
    assert counting_store().exists(late) and counting_store().exists(fourth)


@pytest.fixture
def full_store(
    counting_store: type[engines.SessionStore],
) -> Iterator[tuple[str, engines.SessionStore]]:
    """The counting engine at a bound of one session, that session locked: (key, its holder)."""
    with override_settings(
        SESSION_ENGINE="tests.engine_counting", STATEMODES_INPROC_MAX_SESSIONS=1
    ):
        key = make(counting_store, "held", 300)
        holder = counting_store(key, access="ReadWrite")
        assert holder["name"] == "held"
        yield key, holder
        holder.finish(save=False)


def test_when_every_session_is_locked_a_new_session_gets_a_503_with_retry_after(
    full_store: tuple[str, engines.SessionStore],
    ended: Ended,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key, holder = full_store
    client = Client()
    with caplog.at_level(logging.ERROR, logger="django_statemodes"):
        response = client.get("/increment/")
    assert response.status_code == 503
    assert response["Retry-After"]
    # The setting to check is for the site's operators: in the log, not on the visitor's page
    # (issue 14, point 6: the 503 page shows internals only with DEBUG on).
    assert COOKIE not in response.cookies  # nothing was stored, so no key is handed out
    assert "Check STATEMODES_INPROC_MAX_SESSIONS" in caplog.text
    assert "locked" in caplog.text
    assert ended == []  # the held session was neither evicted nor dropped
    assert engines.SessionStore().exists(key)

    # Once the holder's request ends, its session may be evicted: the next new session fits.
    holder.finish(save=False)
    assert client.get("/increment/").json() == {"counter": 1}
    assert ended == [(key, {"name": "held", "_session_expiry": 300}, "evicted")]


def test_a_full_store_answers_503_on_the_async_path_too(
    full_store: tuple[str, engines.SessionStore],
) -> None:
    response = asyncio.run(AsyncClient().get("/async-increment/"))
    assert response.status_code == 503
    assert response["Retry-After"]
    assert COOKIE not in response.cookies
