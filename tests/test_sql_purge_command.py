"""``manage.py purge_sessions`` on SQL mode, through the command, on PostgreSQL and SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from django_statemodes.backends.sql import SessionStore
from django_statemodes.providers.sql import SQLStateProvider
from django_statemodes.signals import session_end
from django_statemodes.testing import new_key
from tests.fixtures_sql import ALIASES, fetch_one

pytestmark = pytest.mark.django_db(databases=["default", *ALIASES])

PAYLOAD_COLUMNS = ("SessionItemShort", "SessionItemLong")


@pytest.fixture(params=ALIASES)
def provider(request: Any, settings: Any, sql_tables: list[str]) -> SQLStateProvider:
    """The provider the command itself uses, its application purged of expired rows."""
    settings.SESSION_ENGINE = "django_statemodes.backends.sql"
    settings.STATEMODES_SQL_DATABASE = request.param
    provider = SessionStore.get_provider()
    assert isinstance(provider, SQLStateProvider) and provider.alias == request.param
    provider.purge_expired()
    return provider


def purge(*args: str) -> str:
    out = StringIO()
    call_command("purge_sessions", *args, stdout=out, stderr=out)
    return out.getvalue()


def add(provider: SQLStateProvider, data: dict[str, Any], *, timeout: int) -> str:
    """Store a session as the core writes it (marker byte + JSON); timeout 0 = expired now."""
    key = new_key()
    payload = b"\x00" + json.dumps(data, separators=(",", ":")).encode()
    assert provider.set_and_release(key, payload, lock_id=None, timeout=timeout, new_item=True)
    return key


def stored(provider: SQLStateProvider, key: str) -> bool:
    # A row count on the provider's autocommit connection: expired rows are invisible to
    # get(), so only the table says whether a purge deleted them.
    sql = 'SELECT count(*) FROM "ASPStateTempSessions" WHERE "SessionId" = %s'
    row = fetch_one(provider, sql, (provider.sid(key),))
    return bool(row[0])


@contextmanager
def statements_sent(provider: SQLStateProvider) -> Iterator[list[str]]:
    """Record every statement this thread's provider connection sends, at the driver."""
    sent: list[str] = []
    if provider.vendor == "sqlite":
        provider.run(lambda conn: conn.set_trace_callback(sent.append))
        try:
            yield sent
        finally:
            provider.run(lambda conn: conn.set_trace_callback(None))
        return
    if provider.vendor == "mysql":
        import MySQLdb.cursors

        class Sent(MySQLdb.cursors.Cursor):  # type: ignore[misc]
            def execute(self, query: Any, args: Any = None) -> Any:
                sent.append(str(query))
                return super().execute(query, args)

        mine = provider.run(lambda conn: conn)
        before = mine.cursorclass
        mine.cursorclass = Sent  # conn.cursor() opens its cursor from this class
        try:
            yield sent
        finally:
            mine.cursorclass = before
        return
    import psycopg

    class Recording(psycopg.Cursor[Any]):
        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(str(query))
            return super().execute(query, *args, **kwargs)

    conn = provider.run(lambda conn: conn)
    previous = conn.cursor_factory
    conn.cursor_factory = Recording  # conn.execute() opens its cursor from this factory
    try:
        yield sent
    finally:
        conn.cursor_factory = previous


def test_session_end_gets_each_expired_sessions_data(provider: SQLStateProvider) -> None:
    gone = {add(provider, {"user": name}, timeout=0): name for name in ("ada", "bob", "cy")}
    live = add(provider, {"user": "dee"}, timeout=60)
    ended: list[tuple[str, Any, str]] = []

    def receiver(sender: Any, session_key: str, data: Any, reason: str, **kw: Any) -> None:
        ended.append((session_key, data, reason))

    session_end.connect(receiver)
    try:
        with statements_sent(provider) as sent:
            output = purge("--batch-size", "2")
    finally:
        session_end.disconnect(receiver)
    assert output == "Purged 3 expired session(s).\n"
    assert sorted(ended) == sorted((key, {"user": name}, "expired") for key, name in gone.items())
    assert any(column in sql for sql in sent for column in PAYLOAD_COLUMNS)  # fetched here
    assert not any(stored(provider, key) for key in gone)
    assert stored(provider, live)
    provider.remove(live)


@pytest.mark.parametrize("provider", ALIASES, indirect=True)
def test_no_payload_is_fetched_without_receivers(provider: SQLStateProvider) -> None:
    assert not session_end.has_listeners()
    gone = [add(provider, {"user": "ada"}, timeout=0) for _ in range(3)]
    with statements_sent(provider) as sent:
        assert purge("--batch-size", "2") == "Purged 3 expired session(s).\n"
    assert sent, "the recording saw no statement at all"
    assert not any(stored(provider, key) for key in gone)
    fetching = [sql for sql in sent if any(column in sql for column in PAYLOAD_COLUMNS)]
    assert fetching == []


def test_verbosity_zero_prints_nothing_and_still_purges(provider: SQLStateProvider) -> None:
    gone = [add(provider, {"n": i}, timeout=0) for i in range(4)]
    assert purge("--verbosity", "0", "--batch-size", "3") == ""
    assert not any(stored(provider, key) for key in gone)
    assert provider.purge_expired(dry_run=True) == 0


def test_dry_run_counts_and_deletes_nothing(provider: SQLStateProvider) -> None:
    gone = [add(provider, {"n": i}, timeout=0) for i in range(5)]
    live = add(provider, {"n": "live"}, timeout=60)
    assert purge("--dry-run") == "5 expired session(s) would be purged.\n"
    assert all(stored(provider, key) for key in gone)
    assert provider.purge_expired(dry_run=True) == 5
    assert purge("--dry-run", "--verbosity", "0") == ""
    assert purge("--verbosity", "0") == ""
    assert not any(stored(provider, key) for key in gone)
    assert stored(provider, live)
    provider.remove(live)
