"""SQL mode on SQLite (the embedded default): the dialect's statements and provider.

Reads and locks share one ``BEGIN IMMEDIATE`` transaction; waiters re-check with a short back-off.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django_statemodes.providers.base import StateItem

from .base import MAX_NOTIFY_WAIT, SQLStateProvider, _Down, _NotInstalled
from .schema import FLAG_UNINITIALIZED, SESSIONS, ColumnTypes
from .statements import Statements

# SQLite keeps timestamps as text in Django's format, in UTC, to the millisecond.
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


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


class SQLiteStateProvider(SQLStateProvider):
    """SQLite through sqlite3: the read and the lock share one ``BEGIN IMMEDIATE``."""

    # Text in Django's SQLite datetime format, so the ORM (the admin) reads it back.
    column_types = ColumnTypes(
        "(strftime('%Y-%m-%d %H:%M:%f', 'now'))", "text", "text", "integer", "blob", "length"
    )

    vendor = "sqlite"
    placeholder = "?"
    driver_errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    #: SQLite has no notifications: a waiting request re-checks the lock after a pause that
    #: starts at poll_first and doubles up to poll_interval, so a short hold is handed over
    #: within a few milliseconds and a long one costs about 60 cheap reads a second.
    poll_first = 0.001
    poll_interval = 0.016
    lowest = ""

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

    # Waiting: a bounded back-off, re-checking the lock with a plain read (in WAL mode it never
    # waits for a writer), so the core's next get_exclusive comes only once the lock is gone.

    def _pauses(self, timeout: float) -> Iterator[float]:
        """Yield each pause before the next check: 1 ms doubling to the cap, until the bound."""
        deadline = time.monotonic() + max(0.0, min(timeout, MAX_NOTIFY_WAIT))
        pause = self.poll_first
        while (remaining := deadline - time.monotonic()) > 0:
            yield min(pause, remaining)
            pause = min(pause * 2, self.poll_interval)

    def wait_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        for pause in self._pauses(timeout):
            time.sleep(pause)
            if not self.holds(session_key, lock_id):
                return

    async def await_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        # Sleep on the event loop, check in a worker thread (with that thread's connection):
        # the loop is never blocked, and no thread is held while the request only waits.
        for pause in self._pauses(timeout):
            await asyncio.sleep(pause)
            if not await asyncio.to_thread(self.holds, session_key, lock_id):
                return

    def now(self) -> Any:
        return self._one(f"SELECT {SQLITE_NOW}", ())[0]

    def _purge_step(
        self, cutoff: Any, since: Any, size: int, *, with_items: bool
    ) -> tuple[int, Any, int, list[tuple[str, Any]]]:
        def work(conn: Any) -> tuple[int, Any, int, list[tuple[str, Any]]]:
            with self._immediate(conn):
                rows = conn.execute(self.sql.purge_scan, (cutoff, since, size)).fetchall()
                mine = [row[0] for row in rows if row[2].endswith(self.suffix)]
                params = (json.dumps(mine), cutoff)
                removed, items = self._delete_batch(conn, params, with_items=with_items)
            newest = rows[-1][1] if rows else None
            return len(rows), newest, removed, items

        result: tuple[int, Any, int, list[tuple[str, Any]]] = self.run(work)
        return result
