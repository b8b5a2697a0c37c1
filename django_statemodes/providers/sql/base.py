"""The SQL providers' shared part (ASP.NET ``SQLServer`` mode), whatever the dialect.

Sessions live in ASP.NET's tables (``manage.py installsqlstate``), reached through a Django
``DATABASES`` alias on PostgreSQL (production) or SQLite (embedded). The provider never uses the
ORM or Django's own connection for the alias: each thread has its own autocommit connection, so
a session lock is visible to other requests at once, whatever ``ATOMIC_REQUESTS`` or
``transaction.atomic`` do in the view. A request cycle is two statements, as in ASP.NET: lock and
load (``TempGetStateItemExclusive3``), then save and release (``TempUpdateStateItem*``).
PostgreSQL wakes waiting requests with ``LISTEN``/``NOTIFY``; SQLite polls with a short back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, NoReturn

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from django_statemodes.conf import conf
from django_statemodes.exceptions import SessionStoreUnavailable, SQLStateNotInstalled
from django_statemodes.providers.base import ExpiredItem, SessionStateProvider, StateItem

from . import schema, statements
from .schema import ITEM_SHORT_LENGTH

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

    settings: ClassVar[frozenset[str]] = frozenset(
        {"DATABASES", "STATEMODES_SQL_DATABASE", "STATEMODES_APPLICATION_NAME"}
    )

    #: How this dialect spells the tables' column types (``installsqlstate``).
    column_types: ClassVar[schema.ColumnTypes]

    @classmethod
    def table_persistence(cls, connection: BaseDatabaseWrapper, table: str) -> str | None:
        """Return TEMP or PERSISTED for an installed table (PERSISTED: no UNLOGGED tables)."""
        return schema.PERSISTED

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
        locked, cookie, age, _timeout, payload, initialize = row
        return StateItem(
            data=None if payload is None else bytes(payload),
            locked=bool(locked),
            lock_id=int(cookie),
            lock_age=float(age or 0.0),
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
        keep_lock: bool = False,
    ) -> bool:
        short, long = _split(data)
        sid = self.sid(session_key)
        if new_item:
            return self._count(self.sql.insert, (sid, timeout, timeout, short, long, 0)) == 1
        if lock_id is None:
            return self._count(self.sql.update_any, (timeout, timeout, short, long, sid)) == 1
        sql = self.sql.update_keep if keep_lock else self.sql.update_release
        return self._count(sql, (timeout, timeout, short, long, sid, lock_id)) == 1

    def release(self, session_key: str, lock_id: int) -> None:
        self._count(self.sql.release, (self.sid(session_key), lock_id))

    def remove(self, session_key: str, lock_id: int | None = None) -> bool:
        sid = self.sid(session_key)
        if lock_id is None:
            return self._count(self.sql.remove_any, (sid,)) == 1
        return self._count(self.sql.remove, (sid, lock_id)) == 1

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
