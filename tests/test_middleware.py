"""SessionStateMiddleware: per-view modes, locking through requests, failures, async."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.test import AsyncClient, Client, override_settings

from django_statemodes.backends.inproc import SessionStore
from django_statemodes.core import locking
from django_statemodes.core.locking import lock_stats
from django_statemodes.exceptions import (
    SessionLockLost,
    SessionStateDisabled,
    SessionStateReadOnly,
)
from tests import engines

COOKIE = settings.SESSION_COOKIE_NAME


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def session_key(client: Client) -> Iterator[str]:
    response = client.get("/increment/")
    assert response.json() == {"counter": 1}
    key = response.cookies[COOKIE].value
    yield key
    SessionStore().delete(key)


def hold_lock(key: str) -> SessionStore:
    """Take the session's lock as a long request would, and keep it."""
    holder = SessionStore(key, access="ReadWrite")
    assert holder["counter"] >= 0
    assert holder._lock_id is not None
    return holder


def test_a_new_session_gets_a_cookie_and_vary_cookie(client: Client) -> None:
    response = client.get("/increment/")
    assert response.status_code == 200
    assert COOKIE in response.cookies
    assert response.cookies[COOKIE]["httponly"] is True
    assert response["Vary"] == "Cookie"
    assert client.get("/increment/").json() == {"counter": 2}


def test_the_lock_is_released_when_the_response_is_produced(
    client: Client, session_key: str
) -> None:
    client.get("/increment/")
    item = SessionStore.get_provider().get(session_key)
    assert item is not None and item.locked is False


def test_read_only_view_reads_without_cookie_or_lock(client: Client, session_key: str) -> None:
    response = client.get("/read-only/")
    assert response.json() == {"counter": 1}
    assert COOKIE not in response.cookies
    assert response["Vary"] == "Cookie"
    item = SessionStore.get_provider().get(session_key)
    assert item is not None and item.lock_id == 1  # never taken: no exclusive get happened


def test_read_only_view_is_answered_while_a_writer_holds_the_lock(
    client: Client, session_key: str, settings: object
) -> None:
    holder = hold_lock(session_key)
    holder["counter"] = 50  # not committed yet
    before = (lock_stats.waited, lock_stats.stolen)
    response = client.get("/read-only/")
    assert (lock_stats.waited, lock_stats.stolen) == before  # never queued behind the writer
    assert response.json() == {"counter": 1}  # the last committed value
    holder.finish(save=True)
    assert client.get("/read-only/").json() == {"counter": 50}


def test_a_write_in_a_read_only_view_raises_naming_the_view(
    client: Client, session_key: str
) -> None:
    with pytest.raises(SessionStateReadOnly, match="tests.views.read_only_write"):
        client.get("/read-only-write/")
    assert client.get("/read/").json() == {"counter": 1}


def test_class_based_view_attribute_sets_the_mode(client: Client, session_key: str) -> None:
    assert client.get("/cbv-read-only/").json() == {"counter": 1}
    with pytest.raises(SessionStateReadOnly, match="ReadOnlyView"):
        client.post("/cbv-read-only/")


@pytest.fixture
def counting_client() -> Iterator[Client]:
    """A client with a session on the counting engine, its cookie sent, the counts at zero."""
    # The engine is set here, not on the test: a client loads the middleware (and so the
    # engine) on its first request, which this fixture makes.
    with override_settings(SESSION_ENGINE="tests.engine_counting"):
        engines.empty_counting_store()
        client = Client()
        client.get("/increment/")
        assert COOKIE in client.cookies
        engines.calls.clear()
        yield client


# SESSION_SAVE_EVERY_REQUEST with a session cookie is where an unmarked view does store I/O and
# sends a cookie without touching the session (sessions otherwise load lazily, so a view that
# never touches the session would do no I/O even unmarked).
@override_settings(SESSION_SAVE_EVERY_REQUEST=True)
def test_an_unmarked_view_that_ignores_the_session_still_saves_it(counting_client: Client) -> None:
    response = counting_client.get("/unmarked-disabled-twin/")
    assert response.content == b"no session here"
    assert engines.calls == {"get_exclusive": 1, "set_and_release": 1}
    assert COOKIE in response.cookies
    assert response["Vary"] == "Cookie"


@override_settings(SESSION_SAVE_EVERY_REQUEST=True)
def test_a_disabled_view_does_no_store_io_and_sets_no_cookie(counting_client: Client) -> None:
    response = counting_client.get("/disabled/")
    assert response.content == b"no session here"
    assert engines.calls == {}
    assert COOKIE not in response.cookies  # neither set nor deleted
    assert not response.has_header("Vary")


def test_touching_the_session_in_a_disabled_view_raises(client: Client) -> None:
    with pytest.raises(SessionStateDisabled, match="disabled for this request"):
        client.get("/disabled-touch/")


@override_settings(STATEMODES_DEFAULT_ACCESS="ReadOnly")
def test_default_access_applies_to_unmarked_views(session_key: str) -> None:
    client = Client()
    client.cookies[COOKIE] = session_key
    with pytest.raises(SessionStateReadOnly):
        client.get("/increment/")


@override_settings(STATEMODES_LOCK_TIMEOUT=600)
def test_a_5xx_response_releases_the_lock_without_saving(client: Client, session_key: str) -> None:
    response = client.get("/server-error/")
    assert response.status_code == 500
    before = (lock_stats.waited, lock_stats.stolen)
    assert client.get("/increment/").json() == {"counter": 2}  # 999 was not saved
    assert (lock_stats.waited, lock_stats.stolen) == before  # nobody waited for a leaked lock


@override_settings(STATEMODES_LOCK_TIMEOUT=600)
def test_an_exception_in_the_view_releases_the_lock_without_saving(session_key: str) -> None:
    client = Client(raise_request_exception=False)
    client.cookies[COOKIE] = session_key
    assert client.get("/raises/").status_code == 500
    before = (lock_stats.waited, lock_stats.stolen)
    assert client.get("/increment/").json() == {"counter": 2}
    assert (lock_stats.waited, lock_stats.stolen) == before


def test_release_saves_and_unlocks_before_the_response(client: Client, session_key: str) -> None:
    response = client.get("/release-early/")
    assert response.json() == {"released": True}
    assert client.get("/read/").json() == {"counter": 2}


@override_settings(STATEMODES_LOCK_TIMEOUT=1.0)
def test_a_stale_holders_write_is_refused_with_session_interrupted(
    client: Client, session_key: str
) -> None:
    stale = hold_lock(session_key)
    stale["counter"] = 1000
    assert client.get("/increment/").json() == {"counter": 2}  # broke the 1 s old lock
    with pytest.raises(SessionLockLost):
        stale.finish(save=True)
    assert client.get("/read/").json() == {"counter": 2}


@override_settings(SESSION_ENGINE="tests.engine_down", DEBUG=True)
def test_an_unreachable_store_answers_503_with_a_clear_message() -> None:
    # The store's own message, for the developer: only under DEBUG (tests/test_unavailable_page.py).
    client = Client()
    client.cookies[COOKIE] = "a" * 32
    response = client.get("/increment/")
    assert response.status_code == 503
    assert response["Retry-After"]
    assert b"Unable to make the session state request" in response.content


@override_settings(STATEMODES_LOCK_QUEUE_LIMIT=1, STATEMODES_LOCK_TIMEOUT=30, DEBUG=True)
def test_a_full_queue_answers_503_with_retry_after(session_key: str) -> None:
    holder = hold_lock(session_key)
    results: list[int] = []

    def waiter() -> None:
        waiting = Client()
        waiting.cookies[COOKIE] = session_key
        results.append(waiting.get("/increment/").status_code)

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 5
    while locking.waiting(session_key) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    extra = Client()
    extra.cookies[COOKIE] = session_key
    response = extra.get("/increment/")
    holder.finish(save=False)
    thread.join(timeout=10)
    assert response.status_code == 503
    assert response["Retry-After"]
    assert b"queue limit" in response.content
    assert results == [200]


@override_settings(SESSION_ENGINE="django.contrib.sessions.backends.cache")
def test_django_engines_still_work_without_locking() -> None:
    client = Client()
    assert client.get("/increment/").json() == {"counter": 1}
    assert client.get("/increment/").json() == {"counter": 2}
    assert client.get("/read-only/").json() == {"counter": 2}
    response = client.get("/disabled/")
    assert COOKIE not in response.cookies
    with pytest.raises(SessionStateDisabled):
        client.get("/disabled-touch/")


@override_settings(SESSION_ENGINE="django_statemodes.backends.off", SESSION_SAVE_EVERY_REQUEST=True)
def test_off_engine_refuses_use_and_sets_no_cookie() -> None:
    # A cookie from before the switch to Off, and SESSION_SAVE_EVERY_REQUEST: what would make
    # any other engine set (or, for an empty session, delete) the cookie.
    client = Client(raise_request_exception=False)
    client.cookies[COOKIE] = "a" * 32
    response = client.get("/disabled/")
    assert response.content == b"no session here"
    assert COOKIE not in response.cookies  # neither set nor deleted
    assert not response.has_header("Vary")
    refused = client.get("/increment/")
    assert refused.status_code == 500
    assert COOKIE not in refused.cookies
    assert isinstance(refused.exc_info[1], SessionStateDisabled)  # type: ignore[attr-defined]
    assert "SESSION_ENGINE" in str(refused.exc_info[1])  # type: ignore[attr-defined]


def test_without_save_every_request_an_unmodified_session_is_not_saved(
    counting_client: Client,
) -> None:
    response = counting_client.get("/read/")
    assert response.json() == {"counter": 1}
    assert engines.calls == {"get_exclusive": 1, "release": 1}
    assert COOKIE not in response.cookies


@override_settings(SESSION_SAVE_EVERY_REQUEST=True)
def test_save_every_request_saves_an_unmodified_session_and_resends_the_cookie(
    counting_client: Client,
) -> None:
    key = counting_client.cookies[COOKIE].value
    response = counting_client.get("/read/")
    assert response.json() == {"counter": 1}
    # Saved and released in one call, as a modified session is, and the cookie's expiry slides.
    assert engines.calls == {"get_exclusive": 1, "set_and_release": 1}
    assert response.cookies[COOKIE].value == key
    assert response.cookies[COOKIE]["max-age"] == settings.SESSION_COOKIE_AGE
    assert counting_client.get("/read/").json() == {"counter": 1}


@override_settings(SESSION_SAVE_EVERY_REQUEST=True)
@pytest.mark.parametrize("path", ["/read-only/", "/read-only-untouched/"])
def test_save_every_request_refreshes_a_read_only_session_without_writing_it(
    counting_client: Client, path: str
) -> None:
    key = counting_client.cookies[COOKIE].value
    response = counting_client.get(path)
    assert response.status_code == 200
    # One unlocked read, which slides the stored expiry; nothing written, nothing locked.
    assert engines.calls == {"get": 1}
    assert response.cookies[COOKIE].value == key
    assert response.cookies[COOKIE]["max-age"] == settings.SESSION_COOKIE_AGE


@override_settings(SESSION_SAVE_EVERY_REQUEST=True)
def test_save_every_request_never_refreshes_an_unknown_key_in_a_read_only_view(
    counting_client: Client,
) -> None:
    counting_client.cookies[COOKIE] = "x" * 32
    response = counting_client.get("/read-only-untouched/")
    assert response.status_code == 200
    assert engines.calls == {"get": 1}
    assert response.cookies[COOKIE].value == ""  # deleted, as Django does for an empty session


@override_settings(SESSION_SAVE_EVERY_REQUEST=True)
def test_save_every_request_refreshes_a_read_only_session_on_the_async_path(
    session_key: str,
) -> None:
    async def scenario() -> None:
        client = AsyncClient()
        client.cookies[COOKIE] = session_key
        response = await client.get("/async-read-only/")
        assert response.json() == {"counter": 1}
        assert response.cookies[COOKIE].value == session_key

    asyncio.run(scenario())


def test_async_views_use_the_native_async_path() -> None:
    async def scenario() -> None:
        client = AsyncClient()
        first = await client.get("/async-increment/")
        assert first.json() == {"counter": 1}
        assert COOKIE in first.cookies
        second = await client.get("/async-increment/")
        assert second.json() == {"counter": 2}
        read = await client.get("/async-read-only/")
        assert read.json() == {"counter": 2}
        assert COOKIE not in read.cookies
        item = SessionStore.get_provider().get(first.cookies[COOKIE].value)
        assert item is not None and item.locked is False  # released by afinish()

    asyncio.run(scenario())


@override_settings(CSRF_USE_SESSIONS=True, STATEMODES_LOCK_TIMEOUT=600)
def test_the_mode_is_known_before_csrf_middleware_touches_the_session(session_key: str) -> None:
    # CsrfViewMiddleware reads the session in its request phase with CSRF_USE_SESSIONS.
    holder = hold_lock(session_key)
    client = Client()
    client.cookies[COOKIE] = session_key
    before = (lock_stats.waited, lock_stats.stolen)
    response = client.get("/read-only/")
    assert (lock_stats.waited, lock_stats.stolen) == before  # did not queue behind the holder
    assert response.json() == {"counter": 1}
    holder.finish(save=False)
    item = SessionStore.get_provider().get(session_key)
    assert item is not None and item.locked is False
