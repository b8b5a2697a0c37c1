"""SQL mode on SQLite (the embedded default): the dialect's statements and provider.

Reads and locks share one ``BEGIN IMMEDIATE`` transaction; waiters re-check with a short back-off.
sqlite3 has no async interface: the async methods run the blocking ones in a small executor of
the provider's own (never the event loop's default one, which Django's ``sync_to_async`` and
every other library share), as many threads as the pool has connections.

On the test runner's in-memory database the provider is a ``SQLiteTestDatabaseProvider``: inside
a ``TestCase`` it writes in the test's own transaction, as Django's ``db`` session engine does.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections, transaction

from django_statemodes.conf import conf
from django_statemodes.providers.base import StateItem
from django_statemodes.test import is_runner_memory_database, testing

from .base import ExecutorStateProvider, Retry, _Down, _NotInstalled
from .schema import FLAG_UNINITIALIZED, SESSIONS, ColumnTypes
from .statements import Statements

T = TypeVar("T")

# SQLite keeps timestamps as text in Django's format, in UTC, to the millisecond.
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
# sqlite3's default busy timeout, and the pause between tries of a call met by a table lock.
BUSY_TIMEOUT = 5.0
BUSY_PAUSE = 0.005


def statements(q: Callable[[str], str]) -> Statements:
    """Return SQLite's statements; reads and locks share one ``BEGIN IMMEDIATE`` transaction."""
    t = q(SESSIONS)
    sid, expires, timeout, locked = q("SessionId"), q("Expires"), q("Timeout"), q("Locked")
    cookie, lock_date, flags = q("LockCookie"), q("LockDate"), q("Flags")
    short, long = q("SessionItemShort"), q("SessionItemLong")
    now = SQLITE_NOW

    def later(seconds: str) -> str:
        return f"strftime('%Y-%m-%d %H:%M:%f', 'now', {seconds} || ' seconds')"

    slide = f"{expires} = {later(timeout)}"
    age = f"(julianday('now') - julianday({lock_date})) * 86400.0"
    payload = f"coalesce({short}, {long})"
    write = (
        f"{expires} = {later('?')}, {timeout} = ?, {short} = ?, {long} = ?, "
        f"{flags} = {flags} & ~{FLAG_UNINITIALIZED}"
    )
    lock_check = f"{sid} = ? AND {locked} AND {cookie} = ? AND {expires} > {now}"
    batch = f"DELETE FROM {t} WHERE rowid IN (SELECT value FROM json_each(?)) AND {expires} <= ?"
    return Statements(
        get=(
            f"SELECT {locked}, {cookie}, CASE WHEN {locked} THEN {age} ELSE 0 END, {timeout}, "
            f"{payload}, {flags} & {FLAG_UNINITIALIZED} FROM {t} "
            f"WHERE {sid} = ? AND {expires} > {now}"
        ),
        get_exclusive="",
        lock=(
            f"UPDATE {t} SET {slide}, {lock_date} = {now}, "
            f"{q('LockDateLocal')} = strftime('%Y-%m-%d %H:%M:%f', 'now', 'localtime'), "
            f"{cookie} = {cookie} + 1, {locked} = 1, {flags} = {flags} & ~{FLAG_UNINITIALIZED} "
            f"WHERE {sid} = ?"
        ),
        slide=f"UPDATE {t} SET {slide}, {flags} = {flags} & ~{FLAG_UNINITIALIZED} WHERE {sid} = ?",
        insert=(
            f"INSERT INTO {t} ({sid}, {q('Created')}, {expires}, {lock_date}, "
            f"{q('LockDateLocal')}, {cookie}, {timeout}, {locked}, {short}, {long}, {flags}) "
            f"VALUES (?, {now}, {later('?')}, {now}, "
            f"strftime('%Y-%m-%d %H:%M:%f', 'now', 'localtime'), 1, ?, 0, ?, ?, ?) "
            f"ON CONFLICT ({sid}) DO UPDATE SET {q('Created')} = excluded.{q('Created')}, "
            f"{expires} = excluded.{expires}, {lock_date} = excluded.{lock_date}, "
            f"{q('LockDateLocal')} = excluded.{q('LockDateLocal')}, {cookie} = 1, "
            f"{timeout} = excluded.{timeout}, {locked} = 0, {short} = excluded.{short}, "
            f"{long} = excluded.{long}, {flags} = excluded.{flags} WHERE {t}.{expires} <= {now}"
        ),
        update_release=f"UPDATE {t} SET {write}, {locked} = 0 WHERE {lock_check}",
        update_keep=f"UPDATE {t} SET {write} WHERE {lock_check}",
        update_any=f"UPDATE {t} SET {write} WHERE {sid} = ? AND {expires} > {now}",
        release=f"UPDATE {t} SET {locked} = 0, {slide} WHERE {lock_check}",
        remove=f"DELETE FROM {t} WHERE {sid} = ? AND (NOT {locked} OR {cookie} = ?)",
        remove_any=f"DELETE FROM {t} WHERE {sid} = ?",
        holds=f"SELECT 1 FROM {t} WHERE {lock_check}",
        wait="",
        count_expired=(
            f"SELECT count(*) FROM {t} WHERE {expires} <= {now} AND substr({sid}, -8) = ?"
        ),
        purge_batch=batch,
        # Payloads only when session_end has receivers: most purges need none of them.
        purge_batch_items=f"{batch} RETURNING {sid}, {payload}",
        purge_scan=(
            f"SELECT rowid, {expires}, {sid} FROM {t} WHERE {expires} <= ? AND {expires} >= ? "
            f"ORDER BY {expires} LIMIT ?"
        ),
    )


class SQLiteStateProvider(ExecutorStateProvider):
    """SQLite through sqlite3: the read and the lock share one ``BEGIN IMMEDIATE``."""

    # Text in Django's SQLite datetime format, so the ORM (the admin) reads it back.
    column_types = ColumnTypes(
        "(strftime('%Y-%m-%d %H:%M:%f', 'now'))", "text", "text", "integer", "blob", "length"
    )

    vendor = "sqlite"
    placeholder = "?"
    driver_errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    lowest = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> SQLiteStateProvider:
        # Chosen once, when the provider is built (apps.py closes the providers once the
        # runner's test database has its tables, and the next use builds them again), so the
        # production path never asks. Subclasses are built as they are.
        chosen = cls
        if cls is SQLiteStateProvider and testing():
            alias = (args[0] if args else kwargs.get("alias")) or conf.STATEMODES_SQL_DATABASE
            if is_runner_memory_database(connections[alias].settings_dict.get("NAME")):
                chosen = SQLiteTestDatabaseProvider
        provider: SQLiteStateProvider = super().__new__(chosen)
        return provider

    def make_statements(self, q: Callable[[str], str]) -> Statements:
        return statements(q)

    def connect(self) -> Any:
        wrapper = self._new_wrapper()
        try:
            conn = wrapper.get_new_connection(wrapper.get_connection_params())
        except sqlite3.Error as exc:
            raise _Down(str(exc)) from exc
        conn.isolation_level = None  # autocommit; transactions only where we BEGIN them
        return conn

    def classify(self, exc: Exception) -> type[Exception] | None:
        message = str(exc)
        if "no such table" in message:
            return _NotInstalled
        if isinstance(exc, sqlite3.OperationalError):
            return _Down  # "database is locked" past the busy timeout, unreadable file, ...
        return None

    def _connection_survives(self, exc: Exception, conn: Any) -> bool:
        # A table another connection holds is no fault of this one: once its transaction is
        # rolled back it is as good as before, and so are the pool's idle ones.
        return _table_locked(exc) and not conn.in_transaction

    def _retry_after(self, exc: Exception, reused: bool, retry: Retry) -> float:
        # A shared-cache database (the test runner's in-memory one, or any
        # "file:...?cache=shared") reports a table another connection of this process writes as
        # SQLITE_LOCKED at once: SQLite's busy timeout covers only SQLITE_BUSY. So wait here
        # as the busy timeout would (the call is whole again: its transaction rolled back).
        if _table_locked(exc):
            now = time.monotonic()
            if retry.busy_until is None:
                options = connections[self.alias].settings_dict.get("OPTIONS", {})
                retry.busy_until = now + float(options.get("timeout", BUSY_TIMEOUT))
            if now < retry.busy_until:
                return BUSY_PAUSE
        return super()._retry_after(exc, reused, retry)

    @contextmanager
    def _immediate(self, conn: Any) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _read(self, session_key: str, exclusive: bool) -> StateItem | None:
        if not session_key:
            return None  # Django's exists(None)
        sid = self.sid(session_key)

        def work(conn: Any) -> Any:
            with self._immediate(conn):
                row = conn.execute(self.sql.get, (sid,)).fetchone()
                if row is None:
                    return None
                if exclusive and not row[0]:
                    conn.execute(self.sql.lock, (sid,))
                    return (False, row[1] + 1, 0.0, row[3], row[4], row[5])
                conn.execute(self.sql.slide, (sid,))
                return (True, row[1], row[2], row[3], None, False) if exclusive else row

        row = self.run(work)
        return None if row is None else self._item(row)

    def get(self, session_key: str) -> StateItem | None:
        return self._read(session_key, exclusive=False)

    def get_exclusive(self, session_key: str) -> StateItem | None:
        return self._read(session_key, exclusive=True)

    def now(self) -> Any:
        return self._one(f"SELECT {SQLITE_NOW}", ())[0]

    def _purge_step(
        self, conn: Any, cutoff: Any, since: Any, size: int, *, with_items: bool
    ) -> tuple[int, Any, int, list[tuple[str, Any]]]:
        with self._immediate(conn):
            rows = conn.execute(self.sql.purge_scan, (cutoff, since, size)).fetchall()
            mine = [row[0] for row in rows if row[2].endswith(self.suffix)]
            params = (json.dumps(mine), cutoff)
            removed, items = self._delete_batch(conn, params, with_items=with_items)
        newest = rows[-1][1] if rows else None
        return len(rows), newest, removed, items


class SQLiteTestDatabaseProvider(SQLiteStateProvider):
    """The provider on the test runner's in-memory database: it joins the test's transaction.

    SQLite has one writer per database. A ``TestCase`` keeps a transaction open on Django's
    connection around each test, and once the test writes through the ORM that transaction holds
    the write lock until the test ends: a connection of the provider's own could not write a
    session ("database table is locked"). So while Django's connection of this thread is inside
    an atomic block, each call runs on that connection in a savepoint
    (``transaction.atomic``), and the test's sessions roll back with it, as with Django's ``db``
    engine. Outside one (``TransactionTestCase``) the pool serves, as in production. The
    in-memory database lives only in this process, so no other process ever needed to see the
    locks; async calls run on the thread that owns the test's connection
    (``sync_to_async(thread_sensitive=True)``, the test's own thread under Django's test client
    and ``async_to_sync``).
    """

    def run(self, work: Callable[[Any], T]) -> T:
        connection = connections[self.alias]
        if not connection.in_atomic_block:
            return super().run(work)
        try:
            with transaction.atomic(using=self.alias):
                raw = connection.connection
                # The application row too: an earlier test's insert was rolled back with it.
                self._register_application(raw)
                return work(raw)
        except Exception as exc:
            # No retry: waiting cannot free a lock held by this thread's own transaction.
            self._retry_after(exc, False, Retry(deadline=0.0))
            raise

    @contextmanager
    def _immediate(self, conn: Any) -> Iterator[None]:
        if conn.in_transaction:  # Django's connection, in the savepoint run() opened
            yield
            return
        with super()._immediate(conn):
            yield

    async def _in_executor(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call: Callable[[], T] = functools.partial(method, *args, **kwargs)
        return await sync_to_async(call, thread_sensitive=True)()


def _table_locked(exc: Exception) -> bool:
    """SQLITE_LOCKED on a shared-cache database: a table another connection is writing."""
    return isinstance(exc, sqlite3.OperationalError) and "table is locked" in str(exc)
