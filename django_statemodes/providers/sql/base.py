"""The SQL providers' shared part (ASP.NET ``SQLServer`` mode), whatever the dialect.

Sessions live in ASP.NET's tables (``manage.py installsqlstate``), reached through a Django
``DATABASES`` alias on PostgreSQL (production) or SQLite (embedded). The provider never uses the
ORM or Django's own connection for the alias (except on the test runner's in-memory SQLite
database, inside a test's transaction: ``SQLiteTestDatabaseProvider``): it borrows one of its own autocommit connections
from a bounded pool for each call, so a session lock is visible to other requests at once,
whatever ``ATOMIC_REQUESTS`` or ``transaction.atomic`` do in the view, and a process holds at
most ``STATEMODES_MAX_CONNECTIONS`` of them however many threads ever served a request
(``runserver`` and ASGI start new ones all the time). A request cycle is two statements, as in
ASP.NET: lock and load (``TempGetStateItemExclusive3``), then save and release
(``TempUpdateStateItem*``). PostgreSQL wakes waiting requests with ``LISTEN``/``NOTIFY``; SQLite
polls with a short back-off.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, NoReturn, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from django_statemodes.conf import conf
from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.providers.base import (
    ExpiredItem,
    SessionInfo,
    SessionStateProvider,
    StateItem,
)
from django_statemodes.providers.pool import Pool
from django_statemodes.providers.wakeups import Wakeups

from . import index, schema, statements
from .schema import ITEM_SHORT_LENGTH

logger = logging.getLogger("django_statemodes")

SETTING = "STATEMODES_SQL_DATABASE"
# Longest single wait for a NOTIFY; the core then simply tries the lock again. A safety net for
# a notification that never comes (a holder that died: its lock is broken by the lock timeout).
MAX_NOTIFY_WAIT = 2.0
# Pause between attempts while STATEMODES_SQL_RETRY_INTERVAL lasts (ASP.NET sleeps 1 s).
RETRY_PAUSE = 0.5

T = TypeVar("T")


class _NotInstalled(Exception):
    """A statement found no table: translated to SQLStateNotInstalled with the alias."""


class _Down(Exception):
    """The database could not be reached or dropped the connection."""


def _split(payload: bytes | None) -> tuple[bytes | None, bytes | None]:
    # ASP.NET: up to 7000 bytes inline in SessionItemShort, larger ones in SessionItemLong.
    if payload is None or len(payload) <= ITEM_SHORT_LENGTH:
        return payload, None
    return None, payload


def _one_row(count: int) -> bool:
    return count == 1


def _nothing(outcome: Any) -> None:
    return None


def _same(outcome: Any) -> Any:
    return outcome


@dataclass(frozen=True)
class Query(Generic[T]):
    """One statement, its parameters, and how its outcome becomes the call's result.

    Built once for the blocking and the async paths, which only execute it: ``then`` gets the
    first row (``fetch``) or the row count.
    """

    sql: str
    params: Sequence[Any]
    then: Callable[[Any], T]
    fetch: bool = False
    prepare: bool = True


@dataclass
class Retry:
    """One call's progress through the retry rules (``run`` and ``arun`` share them)."""

    at_once: bool = False  # a stale connection was already replaced once
    deadline: float | None = None
    busy_until: float | None = None  # SQLite: a lock held by another connection of this process


@dataclass
class PurgeProgress:
    """Rows purged so far: a purge restarted on a new connection goes on counting."""

    total: int = 0


class SQLStateProvider(SessionStateProvider):
    """The shared part of the SQL providers: connections, retries, errors, writes, purge."""

    settings: ClassVar[frozenset[str]] = frozenset(
        {
            "DATABASES",
            "STATEMODES_SQL_DATABASE",
            "STATEMODES_SQL_POOLER",
            "STATEMODES_SQL_LISTEN_DATABASE",
            "STATEMODES_APPLICATION_NAME",
            "STATEMODES_MAX_CONNECTIONS",
            "STATEMODES_CONNECTION_WAIT",
            "STATEMODES_CONNECTION_IDLE_TIMEOUT",
        }
    )

    #: How this dialect spells the tables' column types (``installsqlstate``).
    column_types: ClassVar[schema.ColumnTypes]

    #: The index of sessions by user is in the sessions table (schema version 2, index.py).
    indexes_users: ClassVar[bool] = True

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
        self.index_sql = index.index_statements(self.vendor, wrapper.ops.quote_name)
        marker = self.placeholder
        self._register_sql = (
            schema.register_application_statement(wrapper).replace("%s", marker),
            schema.application_name_statement(wrapper).replace("%s", marker),
        )
        self._mutex = threading.Lock()
        self._pool: Pool[Any] | None = None
        self._fresh: set[int] = set()  # ids of connections not lent out yet
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

    def read_only(self, exc: BaseException | None) -> bool:
        """Return True if a driver error says the database refuses writes (a replica)."""
        return False

    def refused_write(self, exc: SessionStoreUnavailable) -> bool:
        """Return True if a call failed only because the database is read-only."""
        return self.read_only(exc.__cause__)

    # Connections: a bounded pool per provider (per process), never Django's connection.

    def _new_wrapper(self) -> BaseDatabaseWrapper:
        return connections.create_connection(self.alias)

    @property
    def store_name(self) -> str:
        """How errors name the store."""
        return f"the SQL session-state database {self.alias!r}"

    def pool_options(self) -> dict[str, Any]:
        """Return the pools' bounds, read from the settings when a pool is built."""
        return {
            "size": int(conf.STATEMODES_MAX_CONNECTIONS),
            "wait": float(conf.STATEMODES_CONNECTION_WAIT),
            "idle_timeout": float(conf.STATEMODES_CONNECTION_IDLE_TIMEOUT),
            "name": self.store_name,
        }

    def pool(self) -> Pool[Any]:
        """Return the pool of blocking connections, building it on first use (or after close)."""
        pool = self._pool
        if pool is None:
            with self._mutex:
                pool = self._pool
                if pool is None:
                    pool = self._pool = Pool(
                        self._open, self._close_connection, **self.pool_options()
                    )
        return pool

    def _open(self) -> Any:
        conn = self.connect()
        self._fresh.add(id(conn))
        return conn

    def _close_connection(self, conn: Any) -> None:
        self._fresh.discard(id(conn))
        conn.close()

    def _reused(self, conn: Any) -> bool:
        """Return True if ``conn`` served a call before (it may have gone stale since)."""
        key = id(conn)
        if key in self._fresh:
            self._fresh.discard(key)
            return False
        return True

    def _registration(self) -> tuple[Query[None], Query[None]]:
        # ASP.NET's TempGetAppID: insert the application row once; refuse a hash collision.
        insert, select = self._register_sql
        return (
            Query(insert, (self.app_id, self.app_name), _nothing),
            Query(select, (self.app_id,), self._registered_as, fetch=True),
        )

    def _registered_as(self, row: Any) -> None:
        stored = row[0].rstrip() if row else self.app_name
        if stored.lower() != self.app_name.lower():
            raise SessionStoreUnavailable(schema.collision(self.app_name, stored), setting=SETTING)
        self._registered = True

    def _register_application(self, conn: Any) -> None:
        for query in self._registration():
            self._perform(conn, query)

    def _register_or_read_only(self, conn: Any) -> None:
        try:
            self._register_application(conn)
        except self.driver_errors as exc:
            if not self.read_only(exc):
                raise
            # A read-only database: register on a later call; reads may still work now.

    placeholder: ClassVar[str] = "%s"

    def _execute(self, conn: Any, sql: str, params: Sequence[Any], *, prepare: bool = True) -> Any:
        return conn.execute(sql, params)

    def _perform(self, conn: Any, query: Query[T]) -> T:
        cursor = self._execute(conn, query.sql, query.params, prepare=query.prepare)
        return query.then(cursor.fetchone() if query.fetch else cursor.rowcount)

    def _raise(self, exc: Exception) -> NoReturn:
        kind = self.classify(exc)
        if kind is _NotInstalled:
            raise schema.not_installed(self.alias) from exc
        if kind is _Down:
            raise _Down(str(exc)) from exc
        raise exc

    def _connection_survives(self, exc: Exception, conn: Any) -> bool:
        """Whether ``conn`` is still good after ``exc``: then it goes back to the pool and the
        pool's other connections are kept. By default a failed connection is closed."""
        return False

    def _retry_after(self, exc: Exception, reused: bool, retry: Retry) -> float:
        """Return the pause before the next attempt, or raise what the call ends with.

        A cached connection that fails (the server restarted) is replaced and the work tried
        once more at once; after that STATEMODES_SQL_RETRY_INTERVAL (ASP.NET's
        sqlConnectionRetryInterval, 0 = no retry) bounds the retries.
        """
        if isinstance(exc, SessionStoreUnavailable):
            raise exc  # not installed, an application-name collision, an exhausted pool
        if isinstance(exc, self.driver_errors) and self.read_only(exc):
            # A replica by mistake, or a failover under way: a 503, never a 500 (reads that
            # need no write still work: ``get`` falls back to a plain read).
            raise SessionStoreUnavailable(
                f"{self.store_name} refuses writes (read-only): {str(exc).strip()}",
                setting=SETTING,
            ) from exc
        if not isinstance(exc, _Down):
            if not isinstance(exc, self.driver_errors):
                raise exc
            kind = self.classify(exc)
            if kind is _NotInstalled:
                raise schema.not_installed(self.alias) from exc
            if kind is not _Down:
                raise exc
        if reused and not retry.at_once:
            retry.at_once = True
            return 0.0  # a stale connection: a fresh one may just work
        now = time.monotonic()
        if retry.deadline is None:
            retry.deadline = now + max(0.0, float(conf.STATEMODES_SQL_RETRY_INTERVAL))
        if now >= retry.deadline:
            raise SessionStoreUnavailable(
                f"Unable to connect to {self.store_name}: {str(exc).strip() or type(exc).__name__}",
                setting=SETTING,
            ) from exc
        return min(RETRY_PAUSE, retry.deadline - now)

    def run(self, work: Callable[[Any], T]) -> T:
        """Run ``work(connection)`` on a pooled connection; retry while the database is down.

        The connection is borrowed for this call only and given back; one that fails is
        closed, and after a stale one the pool's other idle connections are dropped too (they
        are older still). See ``_retry_after`` for when the call is tried again.
        """
        retry = Retry()
        while True:
            pool = self.pool()
            lent: tuple[Any, int] | None = None
            reused = False
            try:
                lent = pool.acquire()
                reused = self._reused(lent[0])
                if not self._registered:
                    self._register_or_read_only(lent[0])
                result = work(lent[0])
            except Exception as exc:
                survives = lent is not None and self._connection_survives(exc, lent[0])
                if lent is not None:
                    pool.release(*lent, broken=not survives)
                pause = self._retry_after(exc, reused, retry)
                if reused and not survives:
                    pool.close()  # the server dropped them all, most likely
                if pause > 0:
                    time.sleep(pause)
                continue
            except BaseException:
                if lent is not None:
                    pool.release(*lent, broken=True)
                raise
            pool.release(*lent)
            return result

    def query(self, query: Query[T]) -> T:
        """Run one statement on a pooled connection and return its interpreted outcome."""
        return self.run(lambda conn: self._perform(conn, query))

    def _one(self, sql: str, params: Sequence[Any], *, prepare: bool = True) -> Any:
        return self.query(Query(sql, params, _same, fetch=True, prepare=prepare))

    def _count(self, sql: str, params: Sequence[Any], *, prepare: bool = True) -> int:
        return int(self.query(Query(sql, params, int, prepare=prepare)))

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

    @classmethod
    def _item_or_none(cls, row: Any) -> StateItem | None:
        return None if row is None else cls._item(row)

    # The contract: writes are the same statement shapes in both dialects. Each ``*_query``
    # builds the statement once for the blocking method here and an async twin.

    def _store_query(
        self,
        session_key: str,
        data: Any,
        *,
        lock_id: int | None,
        timeout: int,
        new_item: bool = False,
        keep_lock: bool = False,
    ) -> Query[bool]:
        short, long = _split(data)
        sid = self.sid(session_key)
        if new_item:
            return Query(self.sql.insert, (sid, timeout, timeout, short, long, 0), _one_row)
        if lock_id is None:
            return Query(self.sql.update_any, (timeout, timeout, short, long, sid), _one_row)
        sql = self.sql.update_keep if keep_lock else self.sql.update_release
        return Query(sql, (timeout, timeout, short, long, sid, lock_id), _one_row)

    def _release_query(self, session_key: str, lock_id: int) -> Query[None]:
        return Query(self.sql.release, (self.sid(session_key), lock_id), _nothing)

    def _remove_query(self, session_key: str, lock_id: int | None) -> Query[bool]:
        sid = self.sid(session_key)
        if lock_id is None:
            return Query(self.sql.remove_any, (sid,), _one_row)
        return Query(self.sql.remove, (sid, lock_id), _one_row)

    def _create_query(self, session_key: str, timeout: int) -> Query[bool]:
        params = (self.sid(session_key), timeout, timeout, None, None, schema.FLAG_UNINITIALIZED)
        return Query(self.sql.insert, params, _one_row)

    def _holds_query(self, session_key: str, lock_id: int) -> Query[bool]:
        return Query(
            self.sql.holds, (self.sid(session_key), lock_id), lambda row: row is not None, True
        )

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
        return self.query(
            self._store_query(
                session_key,
                data,
                lock_id=lock_id,
                timeout=timeout,
                new_item=new_item,
                keep_lock=keep_lock,
            )
        )

    def release(self, session_key: str, lock_id: int) -> None:
        self.query(self._release_query(session_key, lock_id))

    def remove(self, session_key: str, lock_id: int | None = None) -> bool:
        return self.query(self._remove_query(session_key, lock_id))

    def create_uninitialized(self, session_key: str, timeout: int) -> bool:
        return self.query(self._create_query(session_key, timeout))

    def holds(self, session_key: str, lock_id: int) -> bool:
        """Return True while the item is locked with ``lock_id``."""
        return self.query(self._holds_query(session_key, lock_id))

    # The index of sessions by user (columns of schema version 2: index.py).

    def _indexed(self, work: Callable[[], T]) -> T:
        errors: tuple[type[Exception], ...] = (SessionStoreUnavailable, *self.driver_errors)
        try:
            return work()
        except errors as exc:
            # SQLite and MySQL report a missing column as an operational error, which run()
            # turns into SessionStoreUnavailable: the driver's message is then its cause.
            message = f"{exc} {exc.__cause__}".lower()
            if "userid" in message or "lastseen" in message or "ipaddress" in message:
                # A table of schema version 1: the index needs the upgrade.
                raise SessionStoreUnavailable(
                    f"The SQL session-state table in database {self.alias!r} has no columns "
                    "for the index of sessions by user (STATEMODES_USER_INDEX). Run "
                    f"'manage.py installsqlstate --database {self.alias}' to upgrade it.",
                    setting="STATEMODES_USER_INDEX",
                ) from exc
            raise

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        def work(conn: Any) -> list[Any]:
            return list(self._execute(conn, sql, params, prepare=False).fetchall())

        return self._indexed(lambda: self.run(work))

    def _info(self, row: Any) -> SessionInfo:
        sid, user_id, created, seen, expires, ip, agent, locked, age, size = row
        return SessionInfo(
            session_key=sid[: -len(self.suffix)],
            user_id=user_id or "",
            created=float(created),
            last_seen=float(seen),
            expires=float(expires),
            ip=ip,
            user_agent=agent,
            locked=bool(locked),
            lock_age=float(age or 0.0),
            size=int(size or 0),
        )

    def bind_user(
        self, session_key: str, user_id: str, *, ip: str | None, user_agent: str | None
    ) -> bool:
        if not user_id or len(user_id) > index.USER_ID_LENGTH:
            raise ValueError(f"a user id is 1 to {index.USER_ID_LENGTH} characters")
        params = (
            user_id,
            None if ip is None else ip[: index.IP_LENGTH],
            None if user_agent is None else user_agent[: index.USER_AGENT_LENGTH],
            self.sid(session_key),
        )
        query = Query(self.index_sql.bind, params, _one_row, prepare=False)
        return self._indexed(lambda: self.query(query))

    def touch_user(self, session_key: str, *, ip: str | None, user_agent: str | None) -> None:
        params = (
            None if ip is None else ip[: index.IP_LENGTH],
            None if user_agent is None else user_agent[: index.USER_AGENT_LENGTH],
            self.sid(session_key),
        )
        query = Query(self.index_sql.touch, params, _nothing, prepare=False)
        self._indexed(lambda: self.query(query))

    def unbind_user(self, session_key: str) -> None:
        query = Query(self.index_sql.unbind, (self.sid(session_key),), _nothing, prepare=False)
        self._indexed(lambda: self.query(query))

    def user_sessions(self, user_id: str) -> list[SessionInfo]:
        rows = self._rows(self.index_sql.by_user, (user_id, self.suffix))
        return [self._info(row) for row in rows]

    def list_sessions(
        self, *, user_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SessionInfo], int]:
        offset, limit = max(0, int(offset)), max(0, int(limit))
        if user_id is None:
            rows = self._rows(self.index_sql.page, (self.suffix, limit, offset))
            total = self._rows(self.index_sql.total, (self.suffix,))[0][0]
        else:
            rows = self._rows(self.index_sql.page_of_user, (user_id, self.suffix, limit, offset))
            total = self._rows(self.index_sql.total_of_user, (user_id, self.suffix))[0][0]
        return [self._info(row) for row in rows], int(total)

    async def _aindex(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run an index method for async code (in a thread: none is on a request's path)."""
        call: Callable[[], T] = functools.partial(method, *args, **kwargs)
        return await sync_to_async(call, thread_sensitive=False)()

    async def abind_user(
        self, session_key: str, user_id: str, *, ip: str | None, user_agent: str | None
    ) -> bool:
        return await self._aindex(
            self.bind_user, session_key, user_id, ip=ip, user_agent=user_agent
        )

    async def atouch_user(
        self, session_key: str, *, ip: str | None, user_agent: str | None
    ) -> None:
        await self._aindex(self.touch_user, session_key, ip=ip, user_agent=user_agent)

    async def aunbind_user(self, session_key: str) -> None:
        await self._aindex(self.unbind_user, session_key)

    async def auser_sessions(self, user_id: str) -> list[SessionInfo]:
        return await self._aindex(self.user_sessions, user_id)

    async def alist_sessions(
        self, *, user_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SessionInfo], int]:
        return await self._aindex(self.list_sessions, user_id=user_id, offset=offset, limit=limit)

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
        progress = PurgeProgress()

        def work(conn: Any) -> int:
            # One connection for the whole purge: its session settings (``_purging``) must
            # apply to every batch, and be reset on the connection they were set on.
            with self._purging(conn):
                return self._purge_batches(conn, cutoff, size, on_expired, on_batch, progress)

        return self.run(work)

    @contextmanager
    def _purging(self, conn: Any) -> Iterator[None]:
        """Set ``conn`` up for a purge (PostgreSQL: commits that do not wait for WAL)."""
        yield

    def _purge_batches(
        self,
        conn: Any,
        cutoff: Any,
        size: int,
        on_expired: Callable[[ExpiredItem], None] | None,
        on_batch: Callable[[int], None] | None,
        progress: PurgeProgress,
    ) -> int:
        since = self.lowest
        pause = self.purge_pause
        while True:
            started = time.monotonic()
            scanned, newest, removed, items = self._purge_step(
                conn, cutoff, since, size, with_items=on_expired is not None
            )
            took = time.monotonic() - started
            if on_expired is not None:
                for session_id, payload in items:
                    data = None if payload is None else bytes(payload)
                    on_expired(ExpiredItem(session_id[: -len(self.suffix)], data))
            progress.total += removed
            if on_batch is not None:
                on_batch(progress.total)
            if scanned < size or newest is None or (removed == 0 and newest == since):
                return progress.total
            since = newest  # keyset: the next batch starts where this one ended
            if pause > 0:
                time.sleep(took * pause)

    def _purge_step(
        self, conn: Any, cutoff: Any, since: Any, size: int, *, with_items: bool
    ) -> tuple[int, Any, int, list[tuple[str, Any]]]:
        """Delete one batch on ``conn``; return (rows scanned, newest Expires, removed, items)."""
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
        """Close the pooled connections; the provider opens new ones if used again."""
        with self._mutex:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()  # idle ones now, lent ones when they come back


class ExecutorStateProvider(SQLStateProvider):
    """A dialect without async driver or notifications (SQLite, MySQL/MariaDB).

    Async methods run the blocking ones in a small executor of the provider's own (never the
    event loop's default one, which Django's ``sync_to_async`` and every other library share),
    as many threads as the pool has connections. A waiting request re-checks the lock after a
    pause that starts at ``poll_first`` and doubles up to ``poll_interval``, so a short hold is
    handed over within a few milliseconds and a long one costs about 60 cheap reads a second;
    a release by this process wakes its own waiters at once (``Wakeups``), without the pause.
    """

    poll_first = 0.001
    poll_interval = 0.016

    def __init__(self, alias: str | None = None, app_name: str | None = None) -> None:
        super().__init__(alias, app_name)
        self._executor: ThreadPoolExecutor | None = None
        self.wakeups = Wakeups()

    # Releases wake this process's waiters of the session; other processes' waiters poll.

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
        stored = super().set_and_release(
            session_key,
            data,
            lock_id=lock_id,
            timeout=timeout,
            new_item=new_item,
            keep_lock=keep_lock,
        )
        if lock_id is not None and not keep_lock:
            self.wakeups.wake(self.sid(session_key))
        return stored

    def release(self, session_key: str, lock_id: int) -> None:
        super().release(session_key, lock_id)
        self.wakeups.wake(self.sid(session_key))

    def remove(self, session_key: str, lock_id: int | None = None) -> bool:
        removed = super().remove(session_key, lock_id)
        self.wakeups.wake(self.sid(session_key))
        return removed

    # Waiting: a bounded back-off, re-checking the lock with a plain read (never waiting for
    # a writer), so the core's next get_exclusive comes only once the lock is gone.

    def _pauses(self, timeout: float) -> Iterator[float]:
        """Yield each pause before the next check: 1 ms doubling to the cap, until the bound."""
        deadline = time.monotonic() + max(0.0, min(timeout, MAX_NOTIFY_WAIT))
        pause = self.poll_first
        while (remaining := deadline - time.monotonic()) > 0:
            yield min(pause, remaining)
            pause = min(pause * 2, self.poll_interval)

    def wait_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        with self.wakeups.expecting(self.sid(session_key)) as event:
            for pause in self._pauses(timeout):
                if event.wait(pause):
                    event.clear()  # woken by a release here: check at once, then wait again
                if not self.holds(session_key, lock_id):
                    return

    async def await_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        # Sleep on the event loop, check in the provider's executor: the loop is never
        # blocked, and no thread is held while the request only waits.
        sid = self.sid(session_key)
        for pause in self._pauses(timeout):
            async with self.wakeups.aexpecting(sid) as woken:
                try:
                    await asyncio.wait_for(woken, pause)
                except TimeoutError:
                    pass
            if not await self._in_executor(self.holds, session_key, lock_id):
                return

    # Async: the blocking methods, in the provider's executor.

    def executor(self) -> ThreadPoolExecutor:
        """Return the provider's executor, building it on first use (or after close)."""
        executor = self._executor
        if executor is None:
            with self._mutex:
                executor = self._executor
                if executor is None:
                    # No more threads than pooled connections: an async call never waits for
                    # a connection that another of these threads holds.
                    executor = self._executor = ThreadPoolExecutor(
                        max_workers=max(1, int(conf.STATEMODES_MAX_CONNECTIONS)),
                        thread_name_prefix=f"statemodes-{self.vendor}",
                    )
        return executor

    async def _in_executor(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor(), functools.partial(method, *args, **kwargs)
        )

    async def aget(self, session_key: str) -> StateItem | None:
        return await self._in_executor(self.get, session_key)

    async def aget_exclusive(self, session_key: str) -> StateItem | None:
        return await self._in_executor(self.get_exclusive, session_key)

    async def aset_and_release(
        self,
        session_key: str,
        data: Any,
        *,
        lock_id: int | None,
        timeout: int,
        new_item: bool = False,
        keep_lock: bool = False,
    ) -> bool:
        return await self._in_executor(
            self.set_and_release,
            session_key,
            data,
            lock_id=lock_id,
            timeout=timeout,
            new_item=new_item,
            keep_lock=keep_lock,
        )

    async def arelease(self, session_key: str, lock_id: int) -> None:
        await self._in_executor(self.release, session_key, lock_id)

    async def aremove(self, session_key: str, lock_id: int | None = None) -> bool:
        return await self._in_executor(self.remove, session_key, lock_id)

    async def acreate_uninitialized(self, session_key: str, timeout: int) -> bool:
        return await self._in_executor(self.create_uninitialized, session_key, timeout)

    async def _aindex(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._in_executor(method, *args, **kwargs)

    def close(self) -> None:
        """Close the connections and stop the executor (both are rebuilt if used again)."""
        with self._mutex:
            executor, self._executor = self._executor, None
        if executor is not None:
            # Calls under way finish (their connections are closed as they come back); close()
            # may run on one of its threads, which must not wait for itself.
            executor.shutdown(wait=False)
        super().close()
