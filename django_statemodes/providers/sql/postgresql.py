"""SQL mode on PostgreSQL (psycopg 3): the dialect's statements and provider.

Locks are one ``UPDATE ... RETURNING`` each; waiters are woken by ``LISTEN``/``NOTIFY``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper

from django_statemodes.providers.base import StateItem

from .base import MAX_NOTIFY_WAIT, SQLStateProvider, _Down, _NotInstalled
from .schema import FLAG_UNINITIALIZED, FLAG_WAITERS, PERSISTED, SESSIONS, TEMP, ColumnTypes
from .statements import CHANNEL, Statements


def statements(q: Callable[[str], str]) -> Statements:
    """Return PostgreSQL's statements (``q`` quotes an identifier)."""
    t = q(SESSIONS)
    sid, expires, timeout, locked = q("SessionId"), q("Expires"), q("Timeout"), q("Locked")
    cookie, lock_date, flags = q("LockCookie"), q("LockDate"), q("Flags")
    short, long = q("SessionItemShort"), q("SessionItemLong")
    slide = f"{expires} = now() + {timeout} * interval '1 second'"
    age = f"extract(epoch FROM now() - {lock_date})::float8"
    payload = f"coalesce({short}, {long})"
    # NOTIFY costs a commit-time global lock: send it only when a waiter marked the row.
    notify = f"CASE WHEN {flags} & {FLAG_WAITERS} <> 0 THEN pg_notify('{CHANNEL}', {sid}) END"
    # "old" reads the row before the change: RETURNING only sees new values (PostgreSQL < 18).
    # FOR UPDATE makes it wait for, and then read, a concurrent request's committed change.
    old = f"WITH old AS (SELECT {locked} AS was_locked, {flags} AS old_flags FROM {t} WHERE {sid} = %s AND {expires} > now() FOR UPDATE) "
    initialize = f"old_flags & {FLAG_UNINITIALIZED} = {FLAG_UNINITIALIZED}"
    write = (
        f"{expires} = now() + %s * interval '1 second', {timeout} = %s, {short} = %s, "
        f"{long} = %s, {flags} = {flags} & ~{FLAG_UNINITIALIZED}"
    )
    lock_check = f"{sid} = %s AND {locked} AND {cookie} = %s AND {expires} > now()"
    # A batch is a range of the Expires index: the first query finds where the next `size`
    # expired rows end (an index-only walk from where the last batch ended), the DELETE then
    # removes this application's rows in that range, as clearsessions' one DELETE does, but in
    # short transactions. A row a request slid meanwhile no longer matches and stays.
    batch = f"DELETE FROM {t} WHERE {expires} > %s AND {expires} <= %s AND right({sid}, 8) = %s"
    return Statements(
        get=(
            old + f"UPDATE {t} SET {slide}, {flags} = {flags} & ~{FLAG_UNINITIALIZED} "
            f"FROM old WHERE {t}.{sid} = %s RETURNING {locked}, {cookie}, "
            f"CASE WHEN {locked} THEN {age} ELSE 0 END, {timeout}, {payload}, {initialize}"
        ),
        get_exclusive=(
            old + f"UPDATE {t} SET {slide}, "
            f"{lock_date} = CASE WHEN was_locked THEN {lock_date} ELSE now() END, "
            f"{q('LockDateLocal')} = CASE WHEN was_locked THEN {q('LockDateLocal')} "
            f"ELSE localtimestamp END, "
            f"{cookie} = CASE WHEN was_locked THEN {cookie} ELSE {cookie} + 1 END, "
            f"{locked} = true, "
            # A new lock has no waiters yet: they mark it again after their LISTEN.
            f"{flags} = CASE WHEN was_locked THEN {flags} "
            f"ELSE {flags} & ~{FLAG_UNINITIALIZED | FLAG_WAITERS} END "
            f"FROM old WHERE {t}.{sid} = %s RETURNING was_locked, {cookie}, "
            f"CASE WHEN was_locked THEN {age} ELSE 0 END, {timeout}, "
            f"CASE WHEN was_locked THEN NULL ELSE {payload} END, "
            f"NOT was_locked AND {initialize}"
        ),
        lock="",
        slide="",
        insert=(
            f"INSERT INTO {t} ({sid}, {q('Created')}, {expires}, {lock_date}, "
            f"{q('LockDateLocal')}, {cookie}, {timeout}, {locked}, {short}, {long}, {flags}) "
            f"VALUES (%s, now(), now() + %s * interval '1 second', now(), localtimestamp, 1, "
            f"%s, false, %s, %s, %s) "
            # An expired row that was not purged yet is replaced, a live one never.
            f"ON CONFLICT ({sid}) DO UPDATE SET {q('Created')} = EXCLUDED.{q('Created')}, "
            f"{expires} = EXCLUDED.{expires}, {lock_date} = EXCLUDED.{lock_date}, "
            f"{q('LockDateLocal')} = EXCLUDED.{q('LockDateLocal')}, {cookie} = 1, "
            f"{timeout} = EXCLUDED.{timeout}, {locked} = false, {short} = EXCLUDED.{short}, "
            f"{long} = EXCLUDED.{long}, {flags} = EXCLUDED.{flags} WHERE {t}.{expires} <= now()"
        ),
        update_release=(
            f"UPDATE {t} SET {write}, {locked} = false WHERE {lock_check} RETURNING {notify}"
        ),
        update_keep=f"UPDATE {t} SET {write} WHERE {lock_check}",
        update_any=f"UPDATE {t} SET {write} WHERE {sid} = %s AND {expires} > now()",
        release=(f"UPDATE {t} SET {locked} = false, {slide} WHERE {lock_check} RETURNING {notify}"),
        remove=(
            f"DELETE FROM {t} WHERE {sid} = %s AND (NOT {locked} OR {cookie} = %s) "
            f"RETURNING {notify}"
        ),
        remove_any=f"DELETE FROM {t} WHERE {sid} = %s RETURNING {notify}",
        holds=f"SELECT 1 FROM {t} WHERE {lock_check}",
        wait=f"UPDATE {t} SET {flags} = {flags} | {FLAG_WAITERS} WHERE {lock_check} RETURNING 1",
        count_expired=(
            f"SELECT count(*) FROM {t} WHERE {expires} <= now() AND right({sid}, 8) = %s"
        ),
        purge_batch=batch,
        purge_batch_items=f"{batch} RETURNING {sid}, {payload}",
        purge_scan=(
            f"SELECT {expires} FROM {t} WHERE {expires} <= %s AND {expires} > %s "
            f"ORDER BY {expires} OFFSET %s LIMIT 1"
        ),
    )


class PostgresStateProvider(SQLStateProvider):
    """PostgreSQL through psycopg 3: prepared statements, one statement per call, NOTIFY."""

    vendor = "postgresql"
    column_types = ColumnTypes(
        "now()", "timestamptz", "timestamp", "boolean", "bytea", "octet_length", unlogged=True
    )
    lowest = "-infinity"

    def __init__(self, alias: str | None = None, app_name: str | None = None) -> None:
        import psycopg

        self._psycopg = psycopg
        self.driver_errors = (psycopg.Error,)
        super().__init__(alias, app_name)

    @classmethod
    def table_persistence(cls, connection: BaseDatabaseWrapper, table: str) -> str | None:
        """Read ``pg_class.relpersistence``: UNLOGGED tables are TEMP."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT relpersistence FROM pg_class WHERE oid = to_regclass(%s)",
                [connection.ops.quote_name(table)],
            )
            row = cursor.fetchone()
        if row is None:
            return None
        return TEMP if row[0] == "u" else PERSISTED

    def make_statements(self, q: Callable[[str], str]) -> Statements:
        return statements(q)

    def connect(self, autocommit: bool = True) -> Any:
        psycopg = self._psycopg
        wrapper = self._new_wrapper()
        params = wrapper.get_connection_params()
        # Server-side binding (Django's default cursor binds on the client): needed to prepare.
        params["cursor_factory"] = psycopg.Cursor
        # Django disables prepared statements unless OPTIONS name a prepare_threshold (for
        # poolers); ours are prepared explicitly (prepare=True), so enable them, unless the
        # alias's OPTIONS set "prepare_threshold": None on purpose.
        options = wrapper.settings_dict.get("OPTIONS") or {}
        if options.get("prepare_threshold", 0) is not None:
            params["prepare_threshold"] = options.get("prepare_threshold", 5)
        params.setdefault("connect_timeout", 5)
        try:
            return psycopg.connect(autocommit=autocommit, **params)
        except psycopg.Error as exc:
            raise _Down(str(exc)) from exc

    def classify(self, exc: Exception) -> type[Exception] | None:
        errors = self._psycopg.errors
        if isinstance(exc, errors.UndefinedTable):
            return _NotInstalled
        if isinstance(exc, (self._psycopg.OperationalError, self._psycopg.InterfaceError)):
            return _Down
        if getattr(exc, "sqlstate", None) in ("57P01", "57P02", "57P03", "08006", "08003"):
            return _Down  # admin shutdown, crash shutdown, cannot connect now, connection lost
        return None

    def _execute(self, conn: Any, sql: str, params: Sequence[Any], *, prepare: bool = True) -> Any:
        return conn.execute(sql, params, prepare=prepare, binary=True)

    def get(self, session_key: str) -> StateItem | None:
        if not session_key:
            return None  # Django's exists(None)
        sid = self.sid(session_key)
        row = self._one(self.sql.get, (sid, sid))
        return None if row is None else self._item(row)

    def get_exclusive(self, session_key: str) -> StateItem | None:
        sid = self.sid(session_key)
        row = self._one(self.sql.get_exclusive, (sid, sid))
        return None if row is None else self._item(row)

    def now(self) -> Any:
        return self._one("SELECT now()", ())[0]

    @contextmanager
    def _purging(self) -> Iterator[None]:
        # A purge batch need not wait for its WAL to reach the disk: a crash can only bring
        # back expired rows, which the next purge deletes again (and no read serves them).
        self.run(lambda conn: conn.execute("SET synchronous_commit TO off"))
        try:
            yield
        finally:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                try:
                    conn.execute("RESET synchronous_commit")
                except self._psycopg.Error:
                    pass  # a broken connection is replaced on its next use anyway

    def _purge_step(
        self, cutoff: Any, since: Any, size: int, *, with_items: bool
    ) -> tuple[int, Any, int, list[tuple[str, Any]]]:
        bound = self._one(self.sql.purge_scan, (cutoff, since, size - 1), prepare=False)
        upper = cutoff if bound is None else bound[0]
        params = (since, upper, self.suffix)
        removed, items = self.run(
            lambda conn: self._delete_batch(conn, params, with_items=with_items)
        )
        # A full batch: go on after its end (the range is exclusive of `since`).
        return (size if bound is not None else 0), upper, removed, items

    # Waiting: LISTEN on a dedicated connection per thread, woken by the holder's NOTIFY.

    def _listener(self) -> Any:
        conn = getattr(self._local, "listener", None)
        if conn is None:
            conn = self._track(self.connect())
            self._local.listener = conn
        return conn

    def wait_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        sid = self.sid(session_key)
        deadline = time.monotonic() + max(0.0, min(timeout, MAX_NOTIFY_WAIT))
        listener = None
        try:
            listener = self._listener()
            listener.execute(f"LISTEN {CHANNEL}")
            try:
                # Listening now, mark the item as awaited, so that its release sends a NOTIFY,
                # and look once more: a release that came before the mark sent none (and the
                # mark then finds the lock gone); one after it sees the mark.
                still = listener.execute(self.sql.wait, (sid, lock_id), prepare=True).fetchone()
                while still is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    woken = False
                    for notify in listener.notifies(timeout=remaining, stop_after=1):
                        woken = woken or notify.payload == sid
                    if woken:
                        break
            finally:
                listener.execute(f"UNLISTEN {CHANNEL}")
        except (self._psycopg.Error, _Down):
            # No wake-up channel now (the database may be restarting): back off briefly.
            if listener is not None:
                self._local.listener = None
                self._discard(listener)
            time.sleep(max(0.0, min(self.poll_interval, deadline - time.monotonic())))

    async def await_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        # The same LISTEN wait, in a worker thread (with that thread's listener connection):
        # woken by the holder's NOTIFY, never polling, never blocking the event loop.
        await asyncio.to_thread(self.wait_for_release, session_key, lock_id, timeout)
