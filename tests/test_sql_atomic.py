"""Session locks are never taken inside the view's transaction (ATOMIC_REQUESTS, atomic()).

A view writes to the database and touches the session, then blocks, still inside its open
transaction, on an event the test controls. Meanwhile another connection must already see the
session locked (so a second request waits) and must not yet see the view's own write (so the
transaction really is open). When the view ends, committing or rolling back, the lock is gone
and the session intact.

On PostgreSQL the view's transaction is on the session database itself, and writes before it
touches the session: the hardest case. On SQLite (one writer per file) the view touches the
session first, as docs/sql.md advises for a shared file; the session database is the same file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connections, transaction
from django.http import HttpRequest, JsonResponse
from django.test import Client
from django.urls import path

from django_statemodes.backends.sql import SessionStore
from django_statemodes.core.locking import lock_stats
from django_statemodes.providers.sql import SQLStateProvider, schema
from django_statemodes.testing import new_key
from tests.fixtures_sql import ALIASES, MakeProvider, database_name

pytestmark = pytest.mark.django_db(databases=["default", *ALIASES], transaction=True)

# The view's hold: `inside` once it has written and touched the session, `go` lets it finish.
inside = threading.Event()
go = threading.Event()
seen: dict[str, Any] = {}


def work(request: HttpRequest) -> JsonResponse:
    alias = request.GET["alias"]

    def write() -> None:
        User.objects.using(alias).create(username=request.GET["user"])

    def touch() -> None:
        request.session["counter"] = request.session.get("counter", 0) + 1

    steps = (touch, write) if connections[alias].vendor == "sqlite" else (write, touch)
    for step in steps:
        step()
    seen["in_atomic"] = connections[alias].in_atomic_block
    inside.set()
    assert go.wait(30), "the test never let the view finish"
    if "fail" in request.GET:
        raise RuntimeError("the view failed after writing: its transaction rolls back")
    return JsonResponse({"counter": request.session["counter"]})


def under_atomic_block(request: HttpRequest) -> JsonResponse:
    with transaction.atomic(using=request.GET["alias"]):
        return work(request)


urlpatterns = [path("atomic-requests/", work), path("atomic-block/", under_atomic_block)]


class Raw:
    """A plain driver connection, outside Django and the provider: what other clients see."""

    def __init__(self, alias: str) -> None:
        self.vendor = connections[alias].vendor
        settings = connections[alias].settings_dict
        self.quote = connections[alias].ops.quote_name
        self.mark = "%s"
        if self.vendor == "sqlite":
            self.conn: Any = sqlite3.connect(database_name(alias), isolation_level=None)
            self.mark = "?"
        elif self.vendor == "mysql":
            import MySQLdb

            self.conn = MySQLdb.connect(
                host=settings["HOST"],
                port=int(settings["PORT"]),
                user=settings["USER"],
                database=database_name(alias),
                autocommit=True,
            )
            # Committed rows only, as the other requests' connections see them.
            self._one("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", ())
        else:
            import psycopg

            self.conn = psycopg.connect(
                host=settings["HOST"],
                port=settings["PORT"],
                user=settings["USER"],
                dbname=database_name(alias),
                autocommit=True,
            )

    def _one(self, sql: str, params: tuple[Any, ...]) -> Any:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchone() if cursor.description else None
        finally:
            cursor.close()

    def lock(self, sid: str) -> tuple[bool, int]:
        q = self.quote
        row = self._one(
            f"SELECT {q('Locked')}, {q('LockCookie')} FROM {q(schema.SESSIONS)} "
            f"WHERE {q('SessionId')} = {self.mark}",
            (sid,),
        )
        assert row is not None, "the session row is gone"
        return bool(row[0]), int(row[1])

    def users(self, username: str) -> int:
        row = self._one(f"SELECT count(*) FROM auth_user WHERE username = {self.mark}", (username,))
        return int(row[0])

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(params=ALIASES)
def alias(request: Any, settings: Any, sql_tables: list[str]) -> Iterator[str]:
    settings.SESSION_ENGINE = "django_statemodes.backends.sql"
    settings.STATEMODES_SQL_DATABASE = request.param
    settings.STATEMODES_LOCK_TIMEOUT = 60  # no lock is broken while the test holds the view
    settings.ROOT_URLCONF = __name__
    inside.clear()
    go.clear()
    seen.clear()
    yield request.param
    go.set()  # never leave a view blocked


@pytest.fixture
def raw(alias: str) -> Iterator[Raw]:
    conn = Raw(alias)
    yield conn
    conn.close()


# ATOMIC_REQUESTS wraps the plain view; the other view opens transaction.atomic() itself.
MODES = [("ATOMIC_REQUESTS", "/atomic-requests/"), ("atomic()", "/atomic-block/")]


@pytest.fixture(params=MODES, ids=[mode for mode, _ in MODES])
def url(request: Any, alias: str, monkeypatch: pytest.MonkeyPatch) -> str:
    mode, url = request.param
    if mode == "ATOMIC_REQUESTS":
        # Every connection of the alias, the request thread's too, is built from this dict.
        monkeypatch.setitem(connections[alias].settings_dict, "ATOMIC_REQUESTS", True)
    return f"{url}?alias={alias}"


def new_session() -> str:
    store = SessionStore()
    store["counter"] = 1
    store.save()
    assert store.session_key is not None
    return store.session_key


def start_request(url: str, key: str) -> tuple[threading.Thread, list[Any]]:
    """Run one request through the test client in a thread; the view blocks on `go`."""
    responses: list[Any] = []

    def request() -> None:
        client = Client(raise_request_exception=False)
        client.cookies["sessionid"] = key
        responses.append(client.get(url))

    thread = threading.Thread(target=request)
    thread.start()
    assert inside.wait(20), "the view never reached its hold"
    return thread, responses


def other_provider(alias: str, make_provider: MakeProvider) -> SQLStateProvider:
    """A second provider (another process, say), used once before the view starts: its first
    use registers the application row, a write that SQLite would queue behind the view's."""
    provider = make_provider(alias)
    assert provider.get(new_key()) is None
    return provider


def assert_locked_from_outside(
    raw: Raw, provider: SQLStateProvider, key: str, username: str
) -> None:
    locked, cookie = raw.lock(provider.sid(key))
    assert locked  # committed: visible to a connection that is no part of the request
    assert provider.holds(key, cookie)
    if raw.vendor != "sqlite":
        # What a second request of the session gets: the lock, to wait for. (On SQLite the
        # view's open write transaction holds the file's one write lock, which a second
        # request's BEGIN IMMEDIATE waits for whatever the session lock says.)
        item = provider.get_exclusive(key)
        assert item is not None and item.locked and item.lock_id == cookie
    assert raw.users(username) == 0  # while the view's own write is not committed yet


def request_held_in_its_transaction(
    url: str, key: str, raw: Raw, provider: SQLStateProvider, username: str
) -> Any:
    """Run the request, check the lock from outside while its view holds, then let it end."""
    thread, responses = start_request(f"{url}&user={username}", key)
    try:
        assert seen["in_atomic"] is True  # the view really runs in a transaction
        assert_locked_from_outside(raw, provider, key, username)
    finally:
        go.set()
        thread.join(timeout=30)
    assert responses
    return responses[0]


def test_the_lock_is_visible_while_the_view_is_inside_its_transaction(
    url: str, alias: str, raw: Raw, make_provider: MakeProvider
) -> None:
    key = new_session()
    other = other_provider(alias, make_provider)
    response = request_held_in_its_transaction(url, key, raw, other, "ada")
    assert response.status_code == 200
    assert response.json() == {"counter": 2}
    assert raw.lock(other.sid(key))[0] is False  # released after the commit
    assert raw.users("ada") == 1  # the view's transaction committed
    assert SessionStore(key)["counter"] == 2


def test_a_rolled_back_view_still_releases_the_lock_and_keeps_the_session(
    url: str, alias: str, raw: Raw, make_provider: MakeProvider
) -> None:
    key = new_session()
    other = other_provider(alias, make_provider)
    response = request_held_in_its_transaction(f"{url}&fail=1", key, raw, other, "bob")
    assert response.status_code == 500
    assert raw.lock(other.sid(key))[0] is False  # the rollback did not keep the lock
    assert raw.users("bob") == 0  # the view's write was rolled back
    # The session is intact, unchanged by the failed request, and nobody waits for a lock.
    assert SessionStore(key)["counter"] == 1
    inside.clear()
    go.set()
    client = Client()
    client.cookies["sessionid"] = key
    before = (lock_stats.waited, lock_stats.stolen)
    response = client.get(f"{url}&user=carol")
    assert response.json() == {"counter": 2}
    assert (lock_stats.waited, lock_stats.stolen) == before  # it neither waited nor broke a lock


def test_without_atomic_requests_the_plain_view_is_not_in_a_transaction(
    alias: str, make_provider: MakeProvider
) -> None:
    # The control case of the tests above: their in_atomic check can fail.
    key = new_session()
    go.set()
    client = Client()
    client.cookies["sessionid"] = key
    assert client.get(f"/atomic-requests/?alias={alias}&user=dan").json() == {"counter": 2}
    assert seen["in_atomic"] is False
