"""SQL mode on PostgreSQL (psycopg 3): the dialect's statements and provider.

Locks are one ``UPDATE ... RETURNING`` each; waiters are woken by ``LISTEN``/``NOTIFY``, heard
by one listener connection per provider (per process) and handed to blocking and async waiters
alike through ``Wakeups``. Async methods are native (``psycopg.AsyncConnection``, one bounded
pool per event loop): no thread is taken for a call or a wait.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from django_statemodes.conf import conf
from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.providers.base import StateItem
from django_statemodes.providers.pool import AsyncPool, PerLoop
from django_statemodes.providers.wakeups import Wakeups

from .base import MAX_NOTIFY_WAIT, Query, Retry, SQLStateProvider, _Down, _NotInstalled
from .schema import FLAG_UNINITIALIZED, FLAG_WAITERS, PERSISTED, SESSIONS, TEMP, ColumnTypes
from .statements import CHANNEL, Statements

logger = logging.getLogger("django_statemodes")

T = TypeVar("T")

# duplicate_prepared_statement and invalid_sql_statement_name: a statement prepared on a server
# connection met by another client, or missing from the connection a pooler handed over
# (PgBouncer before 1.21, or with max_prepared_statements = 0, in transaction pooling).
POOLER_MIXUP = frozenset({"42P05", "26000"})

#: ``application_name`` of the provider's connections (unless the alias's OPTIONS name one):
#: ``pg_stat_activity`` then tells an operator which connections hold sessions.
APPLICATION_NAME = "django_statemodes"
# The listener's housekeeping period: it sweeps idle pooled connections this often.
LISTEN_TICK = 1.0
# Pause before the listener connects again after losing its connection.
RECONNECT_PAUSE = 1.0
# The listener's states. STARTING: its first connection is under way (a waiter waits for it).
STARTING, LISTENING, DOWN = "starting", "listening", "down"
# Wakeups key woken when the listener settles (a session id is never empty).
SETTLED = ""
# Without a listener (a transaction pooler and no STATEMODES_SQL_LISTEN_DATABASE): re-check the
# lock after 1 ms, doubling up to 16 ms, as on the dialects without notifications.
POLL_FIRST, POLL_CAP = 0.001, 0.016


#: Expires slides with a granularity: a statement leaves it alone while it lags at most
#: SLIDE_SHARE_MS milliseconds per second of timeout (1 %), and never more than SLIDE_CAP,
#: behind where a full slide would put it. Most statements of a busy session then change no
#: indexed column, so PostgreSQL updates the row in place (a HOT update: no new index entry, no
#: index bloat). A session may so end up to min(1 % of its timeout, 60 s) before last access +
#: timeout, no more; reads, inserts and the purge all read Expires as stored, so they agree on
#: which rows are live.
SLIDE_SHARE_MS = 10
SLIDE_CAP = "60 seconds"
#: installsqlstate's fillfactor for the tables: a fifth of each page left free for updates.
FILLFACTOR = 80


def _slid(expires: str, seconds: str) -> str:
    """The new Expires for a slide to ``now() + seconds`` (an SQL expression, used 3 times)."""
    full = f"now() + {seconds} * interval '1 second'"
    lag = f"least({seconds} * interval '{SLIDE_SHARE_MS} milliseconds', interval '{SLIDE_CAP}')"
    # Moved when it lags by more than the granularity, or lies beyond the full slide (a
    # shorter timeout was set): the expiry promised is never extended by the granularity.
    return (
        f"CASE WHEN {expires} > {full} - {lag} AND {expires} <= {full} "
        f"THEN {expires} ELSE {full} END"
    )


def statements(q: Callable[[str], str]) -> Statements:
    """Return PostgreSQL's statements (``q`` quotes an identifier)."""
    t = q(SESSIONS)
    sid, expires, timeout, locked = q("SessionId"), q("Expires"), q("Timeout"), q("Locked")
    cookie, lock_date, flags = q("LockCookie"), q("LockDate"), q("Flags")
    short, long = q("SessionItemShort"), q("SessionItemLong")
    slide = f"{expires} = {_slid(expires, timeout)}"
    age = f"extract(epoch FROM now() - {lock_date})::float8"
    payload = f"coalesce({short}, {long})"
    # NOTIFY costs a commit-time global lock: send it only when a waiter marked the row.
    notify = f"CASE WHEN {flags} & {FLAG_WAITERS} <> 0 THEN pg_notify('{CHANNEL}', {sid}) END"
    # "old" reads the row before the change: RETURNING only sees new values (PostgreSQL < 18).
    # FOR UPDATE makes it wait for, and then read, a concurrent request's committed change.
    old = f"WITH old AS (SELECT {locked} AS was_locked, {flags} AS old_flags FROM {t} WHERE {sid} = %s AND {expires} > now() FOR UPDATE) "
    initialize = f"old_flags & {FLAG_UNINITIALIZED} = {FLAG_UNINITIALIZED}"
    write = (
        # One parameter for the new timeout, used three times by the slide: a subquery.
        f"{expires} = (SELECT {_slid(f'{t}.{expires}', 'p.s')} "
        f"FROM (SELECT %s::integer AS s) AS p), "
        f"{timeout} = %s, {short} = %s, "
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
        peek=(
            f"SELECT {locked}, {cookie}, CASE WHEN {locked} THEN {age} ELSE 0 END, {timeout}, "
            f"{payload}, {flags} & {FLAG_UNINITIALIZED} = {FLAG_UNINITIALIZED} FROM {t} "
            f"WHERE {sid} = %s AND {expires} > now()"
        ),
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


@dataclass
class WaitStats:
    """How waits ended: for tests and capacity planning (a NOTIFY, a timeout, ...)."""

    woken: int = 0  # by the holder's NOTIFY (or the listener's reconnection)
    timed_out: int = 0  # at MAX_NOTIFY_WAIT or the caller's timeout, listening
    unlocked: int = 0  # the mark found the lock already gone
    fallback: int = 0  # no listener: a short sleep


class Listener:
    """One connection LISTENing on the release channel, read by one daemon thread.

    Every NOTIFY payload (a SessionId) wakes that session's waiters; after (re)connecting it
    wakes everybody, since notifications sent while it was away are lost (PostgreSQL queues
    them only for sessions that listen). Started on the first wait, stopped by ``close()``.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        wakeups: Wakeups,
        housekeeping: Callable[[], None],
    ) -> None:
        self.state = STARTING
        self.settled = threading.Event()  # set once the first connection succeeded or failed
        self.heard = 0  # notifications received
        self._connect, self._wakeups, self._housekeeping = connect, wakeups, housekeeping
        self._stopping = threading.Event()
        # close() wakes the thread out of its select() through this pair (no polling for it).
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread = threading.Thread(
            target=self._run, name="statemodes-pg-listener", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close its connection; wake every waiter (no more NOTIFY)."""
        self._stopping.set()
        try:
            self._stop_w.send(b"x")
        except OSError:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._wakeups.wake_all()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                conn = None
                try:
                    conn = self._connect()
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._settle(LISTENING)
                    self._read(conn)
                except Exception as exc:  # the database is down or restarting: try again
                    if self.state != DOWN and not self._stopping.is_set():
                        logger.warning(
                            "Session lock wake-ups stopped (waiters poll until they are back): %s",
                            exc,
                        )
                finally:
                    if conn is not None:
                        try:
                            conn.close()
                        except Exception:
                            pass
                if not self._stopping.is_set():
                    if self.state != DOWN:  # wake everybody once, not at every attempt
                        self._settle(DOWN)
                    self._stopping.wait(RECONNECT_PAUSE)
        finally:
            self.state = DOWN
            self._stop_r.close()
            self._stop_w.close()

    def _settle(self, state: str) -> None:
        self.state = state
        self.settled.set()
        # Listening now (a NOTIFY sent before was not heard) or down (no NOTIFY will come):
        # either way every waiter should look at its lock again.
        self._wakeups.wake_all()

    def _read(self, conn: Any) -> None:
        # A selector, not select.select(): a busy server's descriptors pass FD_SETSIZE (1024).
        with selectors.DefaultSelector() as selector:
            selector.register(conn.fileno(), selectors.EVENT_READ)
            selector.register(self._stop_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                # notifies(timeout=0) returns what arrived (and what execute() queued) at once.
                for notify in conn.notifies(timeout=0):
                    self.heard += 1
                    self._wakeups.wake(notify.payload)
                if not selector.select(LISTEN_TICK):
                    try:
                        self._housekeeping()
                    except Exception:
                        logger.exception("Session connection housekeeping failed")


async def _until(future: asyncio.Future[None], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``future``; return True if it was set."""
    try:
        await asyncio.wait_for(future, max(0.0, seconds))
    except TimeoutError:
        return False
    return True


class PostgresStateProvider(SQLStateProvider):
    """PostgreSQL through psycopg 3: prepared statements, one statement per call, NOTIFY."""

    vendor = "postgresql"
    column_types = ColumnTypes(
        "now()", "timestamptz", "timestamp", "boolean", "bytea", "octet_length", unlogged=True,
        # Room in each page for a row's next version: a HOT update needs it in the same page.
        table_options=f" WITH (fillfactor = {FILLFACTOR})",
    )  # fmt: skip
    lowest = "-infinity"

    def __init__(self, alias: str | None = None, app_name: str | None = None) -> None:
        import psycopg

        self._psycopg = psycopg
        self.driver_errors = (psycopg.Error,)
        super().__init__(alias, app_name)
        self.wakeups = Wakeups()
        self.waits = WaitStats()
        self._stats_mutex = threading.Lock()
        self._listener: Listener | None = None
        self._apools: PerLoop[AsyncPool[Any]] = PerLoop(self._new_apool, drop=self._abandon)
        # Behind a transaction pooler, LISTEN only works on a direct alias of its own.
        self.pooled = conf.STATEMODES_SQL_POOLER == "transaction"
        listen: str | None = conf.STATEMODES_SQL_LISTEN_DATABASE
        self.listen_alias = listen or (None if self.pooled else self.alias)

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

    # Connections.

    def connection_params(
        self, *, asynchronous: bool = False, role: str = "", alias: str | None = None
    ) -> dict[str, Any]:
        """Return psycopg's connection parameters for the alias (or another one)."""
        psycopg = self._psycopg
        wrapper = self._new_wrapper() if alias is None else connections.create_connection(alias)
        params = wrapper.get_connection_params()
        # Server-side binding (Django's default cursor binds on the client): needed to prepare.
        params["cursor_factory"] = psycopg.AsyncCursor if asynchronous else psycopg.Cursor
        # Django disables prepared statements unless OPTIONS name a prepare_threshold (for
        # poolers); ours are prepared explicitly (prepare=True), so enable them, unless the
        # alias's OPTIONS set "prepare_threshold": None on purpose.
        options = wrapper.settings_dict.get("OPTIONS") or {}
        if self.pooled and alias is None:
            # A transaction pooler hands each transaction to any server connection: a named
            # statement prepared on one is missing (or another client's) on the next, unless
            # the pooler tracks them (PgBouncer 1.21+, max_prepared_statements): the OPTIONS
            # then name a threshold.
            params["prepare_threshold"] = options.get("prepare_threshold")
        elif options.get("prepare_threshold", 0) is not None:
            params["prepare_threshold"] = options.get("prepare_threshold", 5)
        params.setdefault("connect_timeout", 5)
        params.setdefault("application_name", f"{APPLICATION_NAME} {role}".strip())
        return params

    def connect(self, autocommit: bool = True, *, role: str = "", alias: str | None = None) -> Any:
        psycopg = self._psycopg
        try:
            params = self.connection_params(role=role, alias=alias)
            return psycopg.connect(autocommit=autocommit, **params)
        except psycopg.Error as exc:
            raise _Down(str(exc)) from exc

    async def aconnect(self) -> Any:
        """Return a new autocommit ``psycopg.AsyncConnection`` for the alias."""
        psycopg = self._psycopg
        try:
            return await psycopg.AsyncConnection.connect(
                autocommit=True, **self.connection_params(asynchronous=True)
            )
        except psycopg.Error as exc:
            raise _Down(str(exc)) from exc

    def classify(self, exc: Exception) -> type[Exception] | None:
        errors = self._psycopg.errors
        if isinstance(exc, errors.UndefinedTable):
            return _NotInstalled
        if self.read_only(exc):
            return _Down
        if isinstance(exc, (self._psycopg.OperationalError, self._psycopg.InterfaceError)):
            return _Down
        if getattr(exc, "sqlstate", None) in ("57P01", "57P02", "57P03", "08006", "08003"):
            return _Down  # admin shutdown, crash shutdown, cannot connect now, connection lost
        return None

    def _retry_after(self, exc: Exception, reused: bool, retry: Retry) -> float:
        if getattr(exc, "sqlstate", None) in POOLER_MIXUP:
            # Never retried: the next call would meet another client's statement again.
            raise SessionStoreUnavailable(
                f"{self.store_name} met another client's prepared statement ({exc}): a "
                f"transaction pooler that does not track prepared statements is in front of "
                f"it. Remove prepare_threshold from the alias's OPTIONS (with "
                f"STATEMODES_SQL_POOLER = 'transaction' nothing is prepared), or set "
                f"PgBouncer's max_prepared_statements above 0 (PgBouncer 1.21+).",
                setting="STATEMODES_SQL_POOLER",
            ) from exc
        return super()._retry_after(exc, reused, retry)

    def read_only(self, exc: BaseException | None) -> bool:
        # 25006: "cannot execute UPDATE in a read-only transaction" (a hot standby, or
        # default_transaction_read_only).
        return isinstance(exc, self._psycopg.Error) and getattr(exc, "sqlstate", None) == "25006"

    def _execute(self, conn: Any, sql: str, params: Sequence[Any], *, prepare: bool = True) -> Any:
        return conn.execute(sql, params, prepare=prepare, binary=True)

    # Async connections: one bounded pool per event loop (a psycopg AsyncConnection belongs to
    # the loop that opened it).

    def _new_apool(self) -> AsyncPool[Any]:
        return AsyncPool(self._aopen, self._aclose_connection, **self.pool_options())

    async def _aopen(self) -> Any:
        conn = await self.aconnect()
        self._fresh.add(id(conn))
        return conn

    async def _aclose_connection(self, conn: Any) -> None:
        self._fresh.discard(id(conn))
        await conn.close()

    def _abandon(self, pool: AsyncPool[Any]) -> None:
        # Its loop is gone (or not ours to await on): close the sockets without it.
        for conn in pool.detach():
            self._fresh.discard(id(conn))
            conn.pgconn.finish()

    async def arun(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``run`` for async code: the same connection bound, errors and retries, on this loop."""
        retry = Retry()
        while True:
            pool = self._apools.get()
            lent: tuple[Any, int] | None = None
            reused = False
            try:
                lent = await pool.acquire()
                reused = self._reused(lent[0])
                if not self._registered:
                    try:
                        for registration in self._registration():
                            await self._aperform(lent[0], registration)
                    except self._psycopg.Error as exc:
                        if not self.read_only(exc):
                            raise
                result = await work(lent[0])
            except Exception as exc:
                # run()'s rule, on this loop's pool: a connection the failure says nothing
                # against goes back, and keeps the pool's other connections with it.
                survives = lent is not None and self._connection_survives(exc, lent[0])
                if lent is not None:
                    await pool.release(*lent, broken=not survives)
                pause = self._retry_after(exc, reused, retry)
                if reused and not survives:
                    await pool.aclose()  # the server dropped them all, most likely
                if pause > 0:
                    await asyncio.sleep(pause)
                continue
            except BaseException:
                if lent is not None:
                    await pool.release(*lent, broken=True)
                raise
            await pool.release(*lent)
            return result

    async def _aperform(self, conn: Any, query: Query[T]) -> T:
        cursor = await conn.execute(query.sql, query.params, prepare=query.prepare, binary=True)
        return query.then(await cursor.fetchone() if query.fetch else cursor.rowcount)

    async def aquery(self, query: Query[T]) -> T:
        """``query`` for async code."""
        return await self.arun(lambda conn: self._aperform(conn, query))

    # The contract's reads (writes are in SQLStateProvider), blocking and async.

    def _get_query(self, session_key: str, exclusive: bool) -> Query[StateItem | None]:
        sid = self.sid(session_key)
        sql = self.sql.get_exclusive if exclusive else self.sql.get
        return Query(sql, (sid, sid), self._item_or_none, fetch=True)

    def _peek_query(self, session_key: str) -> Query[StateItem | None]:
        # A read-only database: the item as stored, without sliding its expiry.
        return Query(self.sql.peek, (self.sid(session_key),), self._item_or_none, True)

    def get(self, session_key: str) -> StateItem | None:
        if not session_key:
            return None  # Django's exists(None)
        try:
            return self.query(self._get_query(session_key, exclusive=False))
        except SessionStoreUnavailable as exc:
            if not self.refused_write(exc):
                raise
        return self.query(self._peek_query(session_key))

    def get_exclusive(self, session_key: str) -> StateItem | None:
        return self.query(self._get_query(session_key, exclusive=True))

    async def aget(self, session_key: str) -> StateItem | None:
        if not session_key:
            return None
        try:
            return await self.aquery(self._get_query(session_key, exclusive=False))
        except SessionStoreUnavailable as exc:
            if not self.refused_write(exc):
                raise
        return await self.aquery(self._peek_query(session_key))

    async def aget_exclusive(self, session_key: str) -> StateItem | None:
        return await self.aquery(self._get_query(session_key, exclusive=True))

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
        return await self.aquery(
            self._store_query(
                session_key,
                data,
                lock_id=lock_id,
                timeout=timeout,
                new_item=new_item,
                keep_lock=keep_lock,
            )
        )

    async def arelease(self, session_key: str, lock_id: int) -> None:
        await self.aquery(self._release_query(session_key, lock_id))

    async def aremove(self, session_key: str, lock_id: int | None = None) -> bool:
        return await self.aquery(self._remove_query(session_key, lock_id))

    async def acreate_uninitialized(self, session_key: str, timeout: int) -> bool:
        return await self.aquery(self._create_query(session_key, timeout))

    async def aholds(self, session_key: str, lock_id: int) -> bool:
        """``holds`` for async code."""
        return await self.aquery(self._holds_query(session_key, lock_id))

    # Purge.

    def now(self) -> Any:
        return self._one("SELECT now()", ())[0]

    def _purge_step(
        self, conn: Any, cutoff: Any, since: Any, size: int, *, with_items: bool
    ) -> tuple[int, Any, int, list[tuple[str, Any]]]:
        scan = self._execute(conn, self.sql.purge_scan, (cutoff, since, size - 1), prepare=False)
        bound = scan.fetchone()
        upper = cutoff if bound is None else bound[0]
        params = (since, upper, self.suffix)
        with conn.transaction():
            # A purge batch need not wait for its WAL to reach the disk: a crash can only
            # bring back expired rows, which the next purge deletes again (and no read serves
            # them). SET LOCAL: it ends with the batch's transaction, so it never reaches
            # another client of a transaction pooler (PgBouncer) through this connection.
            conn.execute("SET LOCAL synchronous_commit TO off")
            removed, items = self._delete_batch(conn, params, with_items=with_items)
        # A full batch: go on after its end (the range is exclusive of `since`).
        return (size if bound is not None else 0), upper, removed, items

    # Waiting: the waiter registers with the listener's Wakeups, then marks the row as awaited
    # (FLAG_WAITERS) on a pooled connection, then sleeps until the holder's NOTIFY.

    def listener(self) -> Listener:
        """Return the listener, starting it on first use (or after close)."""
        listener = self._listener
        if listener is None:
            with self._mutex:
                listener = self._listener
                if listener is None:
                    alias = self.listen_alias
                    listener = self._listener = Listener(
                        lambda: self.connect(role="listener", alias=alias),
                        self.wakeups,
                        self._housekeeping,
                    )
        return listener

    def _housekeeping(self) -> None:
        pool = self._pool
        if pool is not None:
            pool.sweep()
        self._apools.sweep()

    def _mark_query(self, sid: str, lock_id: int) -> Query[bool]:
        # Check that lock_id still holds and mark the row as awaited, in one statement: a
        # release before it finds no mark and sends nothing, but then this finds the lock gone;
        # a release after it sees the mark (the row lock orders the two) and notifies.
        return Query(self.sql.wait, (sid, lock_id), lambda row: row is not None, fetch=True)

    def _patience(self, listening: bool, deadline: float) -> float:
        remaining = max(0.0, deadline - time.monotonic())
        # No wake-up channel now (the database may be restarting): back off briefly.
        return remaining if listening else min(remaining, self.poll_interval)

    def _ended(
        self, *, woken: bool = False, listening: bool = True, unlocked: bool = False
    ) -> None:
        """Count how a wait ended (``waits``)."""
        with self._stats_mutex:
            if unlocked:
                self.waits.unlocked += 1
            elif woken:
                self.waits.woken += 1
            elif listening:
                self.waits.timed_out += 1
            else:
                self.waits.fallback += 1

    def _pauses(self, timeout: float) -> Iterator[float]:
        """Yield the pauses of a wait without listener: 1 ms doubling to 16 ms, bounded."""
        deadline = time.monotonic() + max(0.0, min(timeout, MAX_NOTIFY_WAIT))
        pause = POLL_FIRST
        while (remaining := deadline - time.monotonic()) > 0:
            yield min(pause, remaining)
            pause = min(pause * 2, POLL_CAP)

    def wait_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        if self.listen_alias is None:  # a transaction pooler and no direct alias: re-check
            for pause in self._pauses(timeout):
                time.sleep(pause)
                if not self.holds(session_key, lock_id):
                    self._ended(unlocked=True)
                    return
            self._ended(listening=False)
            return
        deadline = time.monotonic() + max(0.0, min(timeout, MAX_NOTIFY_WAIT))
        listener = self.listener()
        if listener.state is STARTING:
            listener.settled.wait(max(0.0, deadline - time.monotonic()))
        sid = self.sid(session_key)
        with self.wakeups.expecting(sid) as event:
            listening = listener.state is LISTENING  # checked once registered: no race
            try:
                still = self.query(self._mark_query(sid, lock_id))
            except SessionStoreUnavailable:
                still, listening = True, False
            if not still:
                self._ended(unlocked=True)
                return
            woken = event.wait(self._patience(listening, deadline))
            self._ended(woken=woken, listening=listening)

    async def await_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        # The same wait on this loop: a future woken through call_soon_threadsafe, the mark
        # on an async connection. No thread is taken, the loop is never blocked.
        if self.listen_alias is None:
            for pause in self._pauses(timeout):
                await asyncio.sleep(pause)
                if not await self.aholds(session_key, lock_id):
                    self._ended(unlocked=True)
                    return
            self._ended(listening=False)
            return
        deadline = time.monotonic() + max(0.0, min(timeout, MAX_NOTIFY_WAIT))
        listener = self.listener()
        if listener.state is STARTING:
            async with self.wakeups.aexpecting(SETTLED) as settled:
                if listener.state is STARTING:
                    await _until(settled, deadline - time.monotonic())
        sid = self.sid(session_key)
        async with self.wakeups.aexpecting(sid) as future:
            listening = listener.state is LISTENING
            try:
                still = await self.aquery(self._mark_query(sid, lock_id))
            except SessionStoreUnavailable:
                still, listening = True, False
            if not still:
                self._ended(unlocked=True)
                return
            woken = await _until(future, self._patience(listening, deadline))
            self._ended(woken=woken, listening=listening)

    def close(self) -> None:
        """Close the listener, every loop's pool and the blocking pool (rebuilt if used again)."""
        with self._mutex:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, pool in self._apools.clear():
            if loop.is_running() and loop is not current:
                try:
                    # Another thread's loop may be using the pool: close its idle connections
                    # there; those lent out are closed as they come back (generation).
                    loop.call_soon_threadsafe(self._abandon, pool)
                    continue
                except RuntimeError:
                    pass  # closed meanwhile
            self._abandon(pool)
        super().close()
