"""SQL mode (ASP.NET ``SQLServer``): sessions in a database named by ``STATEMODES_SQL_DATABASE``.

Sessions live in ASP.NET's tables (``manage.py installsqlstate``), reached through a Django
``DATABASES`` alias on PostgreSQL (production) or SQLite (embedded). The provider never uses the
ORM or Django's own connection for the alias: each thread has its own autocommit connection, so
a session lock is visible to other requests at once, whatever ``ATOMIC_REQUESTS`` or
``transaction.atomic`` do in the view. A request cycle is two statements, as in ASP.NET: lock and
load (``TempGetStateItemExclusive3``), then save and release (``TempUpdateStateItem*``).
PostgreSQL wakes waiting requests with ``LISTEN``/``NOTIFY``; SQLite polls with a short back-off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, NoReturn

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from django_statemodes.conf import conf
from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.providers.base import ExpiredItem, SessionStateProvider, StateItem
from django_statemodes.sqlstate import schema, statements
from django_statemodes.sqlstate.schema import ITEM_SHORT_LENGTH, SQLStateNotInstalled

from .base import StateModeSessionBase

logger = logging.getLogger("django_statemodes")

SETTING = "STATEMODES_SQL_DATABASE"
# Longest single wait for a NOTIFY; the core then simply tries the lock again. A safety net for
# a notification that never comes (a holder that died: its lock is broken by the lock timeout).
MAX_NOTIFY_WAIT = 2.0
# Pause between attempts while STATEMODES_SQL_RETRY_INTERVAL lasts (ASP.NET sleeps 1 s).
RETRY_PAUSE = 0.5


class _NotInstalled(Exception):
    """A statement found no table: translated to SQLStateNotInstalled with the alias."""


class _Down(Exception):
    """The database could not be reached or dropped the connection."""


def _split(payload: bytes | None) -> tuple[bytes | None, bytes | None]:
    # ASP.NET: up to 7000 bytes inline in SessionItemShort, larger ones in SessionItemLong.
    if payload is None or len(payload) <= ITEM_SHORT_LENGTH:
        return payload, None
    return None, payload


class SQLStateProvider(SessionStateProvider):
    """The shared part of the SQL providers: connections, retries, errors, writes, purge."""

    #: Placeholder used by this dialect's statements.
    vendor: ClassVar[str] = ""

    def __init__(self, alias: str | None = None, app_name: str | None = None) -> None:
        super().__init__()
        self.alias = alias if alias is not None else conf.STATEMODES_SQL_DATABASE
        self.app_name = app_name if app_name is not None else conf.STATEMODES_APPLICATION_NAME
        self.app_id = schema.app_id(self.app_name)
        self.suffix = schema.app_suffix(self.app_id)
        wrapper = connections[self.alias]
        schema.check_vendor(wrapper)
        self.sql = self.make_statements(wrapper.ops.quote_name)
        self._local = threading.local()
        self._open: set[Any] = set()
        self._open_mutex = threading.Lock()
        self._registered = False

    # Dialect hooks.

    def make_statements(self, q: Callable[[str], str]) -> statements.Statements:
        raise NotImplementedError

    def connect(self) -> Any:
        """Return a new autocommit DB-API connection for the alias."""
        raise NotImplementedError

    def classify(self, exc: Exception) -> type[Exception] | None:
        """Return _NotInstalled, _Down, or None (a real bug: re-raise) for a driver error."""
        raise NotImplementedError

    driver_errors: tuple[type[Exception], ...] = ()

    # Connections: one per thread, never Django's connection for the alias.

    def _new_wrapper(self) -> BaseDatabaseWrapper:
        return connections.create_connection(self.alias)

    def _track(self, conn: Any) -> Any:
        with self._open_mutex:
            self._open.add(conn)
        return conn

    def _discard(self, conn: Any) -> None:
        with self._open_mutex:
            self._open.discard(conn)
        try:
            conn.close()
        except Exception:  # a broken connection may fail to close; it is gone either way
            pass

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._track(self.connect())
            self._local.conn = conn
            self._local.used = False
        if not self._registered:
            self._register_application(conn)
        return conn

    def _register_application(self, conn: Any) -> None:
        # ASP.NET's TempGetAppID: insert the application row once; refuse a hash collision.
        wrapper = connections[self.alias]
        marker = self.placeholder
        insert = schema.register_application_statement(wrapper).replace("%s", marker)
        select = schema.application_name_statement(wrapper).replace("%s", marker)
        try:
            self._execute(conn, insert, (self.app_id, self.app_name))
            row = self._execute(conn, select, (self.app_id,)).fetchone()
        except self.driver_errors as exc:
            self._raise(exc)
        stored = row[0].rstrip() if row else self.app_name
        if stored.lower() != self.app_name.lower():
            raise SessionStoreUnavailable(schema.collision(self.app_name, stored), setting=SETTING)
        self._registered = True

    placeholder: ClassVar[str] = "%s"

    def _execute(self, conn: Any, sql: str, params: Sequence[Any], *, prepare: bool = True) -> Any:
        return conn.execute(sql, params)

    def _raise(self, exc: Exception) -> NoReturn:
        kind = self.classify(exc)
        if kind is _NotInstalled:
            raise schema.not_installed(self.alias) from exc
        if kind is _Down:
            raise _Down(str(exc)) from exc
        raise exc

    def run(self, work: Callable[[Any], Any]) -> Any:
        """Run ``work(connection)``; reconnect and retry while the database is down.

        A cached connection that fails (the server restarted) is replaced and the work tried
        once more at once; after that STATEMODES_SQL_RETRY_INTERVAL (ASP.NET's
        sqlConnectionRetryInterval, 0 = no retry) bounds the retries.
        """
        deadline: float | None = None
        retried: tuple[type[Exception], ...] = (*self.driver_errors, _Down)
        while True:
            reused = getattr(self._local, "used", False)
            try:
                result = work(self._connection())
                self._local.used = True
                return result
            except SQLStateNotInstalled:
                raise
            except retried as exc:
                if not isinstance(exc, _Down):
                    kind = self.classify(exc)
                    if kind is _NotInstalled:
                        raise schema.not_installed(self.alias) from exc
                    if kind is not _Down:
                        raise
                conn = getattr(self._local, "conn", None)
                self._local.conn = None
                self._local.used = False
                if conn is not None:
                    self._discard(conn)
                    if reused:
                        continue  # a stale connection: a fresh one may just work
                now = time.monotonic()
                if deadline is None:
                    deadline = now + max(0.0, float(conf.STATEMODES_SQL_RETRY_INTERVAL))
                if now >= deadline:
                    raise SessionStoreUnavailable(
                        f"Unable to connect to the SQL session-state database {self.alias!r}: "
                        f"{str(exc).strip() or type(exc).__name__}",
                        setting=SETTING,
                    ) from exc
                time.sleep(min(RETRY_PAUSE, deadline - now))

    def _one(self, sql: str, params: Sequence[Any], *, prepare: bool = True) -> Any:
        return self.run(lambda conn: self._execute(conn, sql, params, prepare=prepare).fetchone())

    def _count(self, sql: str, params: Sequence[Any], *, prepare: bool = True) -> int:
        return int(
            self.run(lambda conn: self._execute(conn, sql, params, prepare=prepare).rowcount)
        )

    def sid(self, session_key: str) -> str:
        """Return the stored SessionId: the key plus the 8-hex AppId, as ASP.NET stores it."""
        return session_key + self.suffix

    @staticmethod
    def _item(row: Any) -> StateItem:
        locked, cookie, age, timeout, payload, initialize = row
        return StateItem(
            data=None if payload is None else bytes(payload),
            locked=bool(locked),
            lock_id=int(cookie),
            lock_age=float(age or 0.0),
            timeout=int(timeout),
            initialize=bool(initialize),
        )

    # The contract: writes are the same statement shapes in both dialects.

    def set_and_release(
        self,
        session_key: str,
        data: Any,
        *,
        lock_id: int | None,
        timeout: int,
        new_item: bool = False,
        release: bool = True,
    ) -> bool:
        short, long = _split(data)
        sid = self.sid(session_key)
        if new_item:
            return self._count(self.sql.insert, (sid, timeout, timeout, short, long, 0)) == 1
        if lock_id is None:
            return self._count(self.sql.update_any, (timeout, timeout, short, long, sid)) == 1
        sql = self.sql.update_release if release else self.sql.update_keep
        return self._count(sql, (timeout, timeout, short, long, sid, lock_id)) == 1

    def release(self, session_key: str, lock_id: int) -> None:
        self._count(self.sql.release, (self.sid(session_key), lock_id))

    def remove(self, session_key: str, lock_id: int | None = None) -> bool:
        sid = self.sid(session_key)
        if lock_id is None:
            return self._count(self.sql.remove_any, (sid,)) == 1
        return self._count(self.sql.remove, (sid, lock_id)) == 1

    def reset_timeout(self, session_key: str) -> None:
        self._count(self.sql.reset_timeout, (self.sid(session_key),))

    def create_uninitialized(self, session_key: str, timeout: int) -> bool:
        params = (self.sid(session_key), timeout, timeout, None, None, schema.FLAG_UNINITIALIZED)
        return self._count(self.sql.insert, params) == 1

    def holds(self, session_key: str, lock_id: int) -> bool:
        """Return True while the item is locked with ``lock_id``."""
        return self._one(self.sql.holds, (self.sid(session_key), lock_id)) is not None

    # Purge: ASP.NET's DeleteExpiredSessions, in short batches (KB 973849's lesson).

    def now(self) -> Any:
        """Return the database's current time in the form the Expires column compares with."""
        raise NotImplementedError

    lowest: ClassVar[Any] = None
    #: After each purge batch, sleep this fraction of the batch's time, so that live requests
    #: get the database (and, on a small machine, the CPU) between batches.
    purge_pause: float = 0.0

    def purge_expired(
        self,
        *,
        on_expired: Callable[[ExpiredItem], None] | None = None,
        dry_run: bool = False,
        batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Delete this application's expired sessions, each batch its own short transaction.

        ``on_batch`` is called with the running total after each batch (progress reports).
        Payloads are fetched only when ``on_expired`` is given.
        """
        if dry_run:
            row = self._one(self.sql.count_expired, (self.suffix,))
            return int(row[0])
        size = batch_size or conf.STATEMODES_PURGE_BATCH_SIZE
        cutoff = self.now()
        with self._purging():
            return self._purge_batches(cutoff, size, on_expired, on_batch)

    @contextmanager
    def _purging(self) -> Iterator[None]:
        """Set the connection up for a purge (PostgreSQL: commits that do not wait for WAL)."""
        yield

    def _purge_batches(
        self,
        cutoff: Any,
        size: int,
        on_expired: Callable[[ExpiredItem], None] | None,
        on_batch: Callable[[int], None] | None,
    ) -> int:
        since = self.lowest
        total = 0
        pause = self.purge_pause
        while True:
            started = time.monotonic()
            scanned, newest, removed, items = self._purge_step(
                cutoff, since, size, with_items=on_expired is not None
            )
            took = time.monotonic() - started
            if on_expired is not None:
                for session_id, payload in items:
                    data = None if payload is None else bytes(payload)
                    on_expired(ExpiredItem(session_id[: -len(self.suffix)], data))
            total += removed
            if on_batch is not None:
                on_batch(total)
            if scanned < size or newest is None or (removed == 0 and newest == since):
                return total
            since = newest  # keyset: the next batch starts where this one ended
            if pause > 0:
                time.sleep(took * pause)

    def _purge_step(
        self, cutoff: Any, since: Any, size: int, *, with_items: bool
    ) -> tuple[int, Any, int, list[tuple[str, Any]]]:
        """Delete one batch; return (rows scanned, newest Expires scanned, removed, items)."""
        raise NotImplementedError

    def _delete_batch(
        self, conn: Any, params: Sequence[Any], *, with_items: bool
    ) -> tuple[int, list[tuple[str, Any]]]:
        """Run one batch's DELETE on ``conn``; return (removed, items).

        Payloads are fetched only ``with_items``. Purge statements are planned afresh each time
        (never prepared): a generic plan of "Expires <= $1 ... ORDER BY Expires LIMIT $4" may
        scan the whole table per batch.
        """
        if with_items:
            rows = self._execute(conn, self.sql.purge_batch_items, params, prepare=False).fetchall()
            return len(rows), [(row[0], row[1]) for row in rows]
        return int(self._execute(conn, self.sql.purge_batch, params, prepare=False).rowcount), []

    def close(self) -> None:
        with self._open_mutex:
            open_, self._open = self._open, set()
        for conn in open_:
            try:
                conn.close()
            except Exception:
                pass
        self._local = threading.local()


class PostgresStateProvider(SQLStateProvider):
    """PostgreSQL through psycopg 3: prepared statements, one statement per call, NOTIFY."""

    vendor = "postgresql"
    lowest = "-infinity"

    def __init__(self, alias: str | None = None, app_name: str | None = None) -> None:
        import psycopg

        self._psycopg = psycopg
        self.driver_errors = (psycopg.Error,)
        super().__init__(alias, app_name)

    def make_statements(self, q: Callable[[str], str]) -> statements.Statements:
        return statements.postgres(q)

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
            listener.execute(f"LISTEN {statements.CHANNEL}")
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
                listener.execute(f"UNLISTEN {statements.CHANNEL}")
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


class SQLiteStateProvider(SQLStateProvider):
    """SQLite through sqlite3: the read and the lock share one ``BEGIN IMMEDIATE``."""

    vendor = "sqlite"
    placeholder = "?"
    driver_errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    #: SQLite has no notifications: a waiting request re-checks the lock after a pause that
    #: starts at poll_first and doubles up to poll_interval, so a short hold is handed over
    #: within a few milliseconds and a long one costs about 60 cheap reads a second.
    poll_first = 0.001
    poll_interval = 0.016
    lowest = ""

    def make_statements(self, q: Callable[[str], str]) -> statements.Statements:
        return statements.sqlite(q)

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
        return self._one(f"SELECT {statements.SQLITE_NOW}", ())[0]

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


def provider_for(alias: str) -> SQLStateProvider:
    """Return the SQL provider for a ``DATABASES`` alias, by its engine."""
    vendor = connections[alias].vendor
    if vendor == "postgresql":
        return PostgresStateProvider(alias)
    if vendor == "sqlite":
        return SQLiteStateProvider(alias)
    raise SessionStoreUnavailable(
        f"SQL session state supports PostgreSQL and SQLite; database {alias!r} is {vendor}.",
        setting=SETTING,
    )


class SessionStore(StateModeSessionBase):
    """Keep session data in ASP.NET's session-state tables (ASP.NET SQLServer mode)."""

    @classmethod
    def create_provider(cls) -> SessionStateProvider:
        return provider_for(conf.STATEMODES_SQL_DATABASE)
