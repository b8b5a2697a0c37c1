"""SQL mode on MySQL 8 and MariaDB 10.11+ (mysqlclient): the dialect's statements and provider.

Neither has ``UPDATE ... RETURNING`` (MariaDB has it for INSERT and DELETE only), so a lock is
a short transaction, ``SELECT ... FOR UPDATE`` then ``UPDATE``, sent with its ``START
TRANSACTION`` and ``COMMIT`` as one multi-statement: one round trip, as on PostgreSQL. Saving
and releasing is one ``UPDATE`` with the lock-cookie check. There is no ``LISTEN``/``NOTIFY``:
a release wakes this process's waiters at once, other processes' waiters re-check with a short
bounded back-off (``ExecutorStateProvider``). mysqlclient has no async interface: async methods
run in the provider's own executor, as on SQLite.

``--type temp`` creates the same InnoDB tables as ``persisted``: MEMORY tables cannot hold the
payload's BLOB columns and lock whole tables, and InnoDB's durability is a server-wide setting
(``innodb_flush_log_at_trx_commit``), not a table's. See docs/sql.md.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django_statemodes.exceptions import SessionStoreUnavailable

from .base import ExecutorStateProvider, Query, _Down, _NotInstalled
from .schema import FLAG_UNINITIALIZED, SESSIONS, ColumnTypes
from .statements import Statements

T = TypeVar("T")

# MySQL's error numbers (mysqld_error.h) that decide what a failure means.
ER_DUP_ENTRY = 1062
ER_NO_SUCH_TABLE = 1146
# The server or the transaction refuses writes: --read-only, a read-only transaction,
# innodb_read_only.
READ_ONLY = frozenset({1290, 1792, 1836})
# Statements' time: UTC, so the ORM reads the columns back as USE_TZ expects (Django keeps
# datetimes in UTC on MySQL). A lock's statements share one instant, read once into @now.
NOW = "UTC_TIMESTAMP(6)"


def statements(q: Callable[[str], str]) -> Statements:
    """Return MySQL/MariaDB's statements (``q`` quotes an identifier, ``%s`` are values)."""
    t = q(SESSIONS)
    # Every statement on one session reaches its row through the primary key, never through
    # Index_Expires: on a small table MariaDB's optimizer picks the Expires range for
    # "SessionId = %s AND Expires > now", and then a save locks the index entry before the row
    # while a lock holds the row and waits for the entry (an InnoDB deadlock); worse, READ
    # COMMITTED's semi-consistent read lets such a scan skip the row a concurrent lock is
    # moving, so a save found "no row with my lock cookie" (a 400 under 8 clients of one
    # session). Single-table DELETE takes no index hint: the multi-table form does.
    by_key = f"{t} FORCE INDEX (PRIMARY)"
    delete = f"DELETE {t} FROM {by_key}"
    sid, expires, timeout, locked = q("SessionId"), q("Expires"), q("Timeout"), q("Locked")
    cookie, lock_date, local, flags = q("LockCookie"), q("LockDate"), q("LockDateLocal"), q("Flags")
    short, long = q("SessionItemShort"), q("SessionItemLong")
    payload = f"coalesce({short}, {long})"
    age = f"TIMESTAMPDIFF(MICROSECOND, {lock_date}, @now) / 1000000"
    live = f"{sid} = %s AND {expires} > @now"
    uninitialized = f"({flags} & {FLAG_UNINITIALIZED}) = {FLAG_UNINITIALIZED}"
    # MySQL assigns SET's columns left to right, each seeing the ones before: whatever reads
    # Locked (or Expires) comes before the assignment that changes it.
    write = (
        f"{expires} = {NOW} + INTERVAL %s SECOND, {timeout} = %s, {short} = %s, {long} = %s, "
        f"{flags} = {flags} & ~{FLAG_UNINITIALIZED}"
    )
    lock_check = f"{sid} = %s AND {locked} AND {cookie} = %s AND {expires} > {NOW}"
    scan = (
        f"SELECT {sid}, {expires}, %s FROM {t} WHERE {expires} <= %s AND {expires} >= %s "
        f"ORDER BY {expires} LIMIT %s FOR UPDATE"
    )
    peek = (
        f"SET @now = {NOW}; "
        f"SELECT {locked}, {cookie}, IF({locked}, {age}, 0), {timeout}, {payload}, "
        f"{uninitialized} FROM {by_key} WHERE {live}"
    )
    return Statements(
        # TempGetStateItem3: read, then slide; one round trip, no row lock waited for.
        get=(
            f"{peek}; "
            f"UPDATE {by_key} SET {expires} = @now + INTERVAL {timeout} SECOND, "
            f"{flags} = {flags} & ~{FLAG_UNINITIALIZED} WHERE {live}"
        ),
        # TempGetStateItemExclusive3: the row read under its lock, then locked (or, when it
        # already was, only slid), in one short transaction. The SELECT returns what the
        # caller gets: the new cookie and the payload if this call took the lock.
        get_exclusive=(
            f"SET @now = {NOW}; START TRANSACTION; "
            f"SELECT {locked}, IF({locked}, {cookie}, {cookie} + 1), IF({locked}, {age}, 0), "
            f"{timeout}, IF({locked}, NULL, {payload}), NOT {locked} AND {uninitialized} "
            f"FROM {by_key} WHERE {live} FOR UPDATE; "
            f"UPDATE {by_key} SET {expires} = @now + INTERVAL {timeout} SECOND, "
            f"{lock_date} = IF({locked}, {lock_date}, @now), "
            f"{local} = IF({locked}, {local}, NOW(6)), "
            f"{cookie} = IF({locked}, {cookie}, {cookie} + 1), "
            f"{flags} = IF({locked}, {flags}, {flags} & ~{FLAG_UNINITIALIZED}), "
            f"{locked} = TRUE WHERE {live}; COMMIT"
        ),
        lock="",
        slide="",
        # An expired row that was not purged yet is replaced, a live one never: the INSERT
        # then fails on the key, which the provider reads as "not created" (no ON CONFLICT
        # here, and ON DUPLICATE KEY UPDATE cannot tell "kept" from "inserted"). @sid takes
        # the column's character set and collation, as a literal would: a utf8mb4 variable
        # would make MariaDB compare converted values and scan instead of using the key.
        insert=(
            f"SET @sid = CONVERT(%s USING ascii) COLLATE ascii_bin; "
            f"{delete} WHERE {sid} = @sid AND {expires} <= {NOW}; "
            f"INSERT INTO {t} ({sid}, {q('Created')}, {expires}, {lock_date}, {local}, "
            f"{cookie}, {timeout}, {locked}, {short}, {long}, {flags}) "
            f"VALUES (@sid, {NOW}, {NOW} + INTERVAL %s SECOND, {NOW}, NOW(6), 1, %s, FALSE, "
            f"%s, %s, %s)"
        ),
        update_release=f"UPDATE {by_key} SET {write}, {locked} = FALSE WHERE {lock_check}",
        update_keep=f"UPDATE {by_key} SET {write} WHERE {lock_check}",
        update_any=f"UPDATE {by_key} SET {write} WHERE {sid} = %s AND {expires} > {NOW}",
        release=(
            f"UPDATE {by_key} SET {expires} = {NOW} + INTERVAL {timeout} SECOND, {locked} = FALSE "
            f"WHERE {lock_check}"
        ),
        remove=f"{delete} WHERE {sid} = %s AND (NOT {locked} OR {cookie} = %s)",
        remove_any=f"{delete} WHERE {sid} = %s",
        holds=f"SELECT 1 FROM {by_key} WHERE {lock_check}",
        wait="",
        count_expired=(
            f"SELECT count(*) FROM {t} WHERE {expires} <= {NOW} AND RIGHT({sid}, 8) = %s"
        ),
        # One batch: the scanned rows (oldest first, row-locked), then this application's of
        # them deleted, in one transaction. The scan's third column is the payload, fetched
        # only when session_end has receivers.
        purge_batch=f"DELETE FROM {t} WHERE {sid} IN %s AND {expires} <= %s",
        purge_batch_items=scan.replace("%s", payload, 1),
        purge_scan=scan.replace("%s", "NULL", 1),
        peek=peek,
    )


def purge_returning(q: Callable[[str], str]) -> tuple[str, str]:
    """MariaDB's purge batch, without and with payloads: one DELETE that returns its rows."""
    t, sid, expires = q(SESSIONS), q("SessionId"), q("Expires")
    payload = f"coalesce({q('SessionItemShort')}, {q('SessionItemLong')})"
    delete = (
        f"DELETE FROM {t} WHERE {expires} <= %s AND {expires} >= %s AND RIGHT({sid}, 8) = %s "
        f"ORDER BY {expires} LIMIT %s RETURNING {sid}, {expires}"
    )
    return delete, f"{delete}, {payload}"


class _Outcome:
    """A multi-statement's outcome: the first result set's rows, the last statement's count."""

    def __init__(self, cursor: Any) -> None:
        rows: Sequence[Any] | None = None
        while True:
            if rows is None and cursor.description is not None:
                rows = cursor.fetchall()
            self.rowcount = int(cursor.rowcount)
            if not cursor.nextset():  # every result read: the connection is ready again
                break
        self.rows: Sequence[Any] = rows or ()

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return list(self.rows)


class MySQLStateProvider(ExecutorStateProvider):
    """MySQL 8 and MariaDB 10.11+ through mysqlclient: one round trip per call."""

    vendor = "mysql"
    column_types = ColumnTypes(
        "(UTC_TIMESTAMP(6))",
        "datetime(6)",
        "datetime(6)",
        "boolean",
        "longblob",
        "length",
        # Session ids compare byte for byte (MySQL's default collations ignore case).
        key="varchar(88) CHARACTER SET ascii COLLATE ascii_bin",
        table_options=" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    )
    lowest = datetime.datetime(1000, 1, 1)  # DATETIME's lowest value

    def __init__(self, alias: str | None = None, app_name: str | None = None) -> None:
        import MySQLdb

        self._mysql = MySQLdb
        self.driver_errors = (MySQLdb.Error,)
        super().__init__(alias, app_name)

    def make_statements(self, q: Callable[[str], str]) -> Statements:
        self._purge_returning = purge_returning(q)
        return statements(q)

    def connect(self) -> Any:
        from MySQLdb.constants import CLIENT

        wrapper = self._new_wrapper()
        params = wrapper.get_connection_params()
        # FOUND_ROWS (Django's too): an UPDATE counts the rows it matched, not those it
        # changed. MULTI_STATEMENTS: a lock is one round trip. Values are always escaped
        # parameters (mysqlclient binds on the client), never text of the statement.
        flags = CLIENT.FOUND_ROWS | CLIENT.MULTI_STATEMENTS
        params["client_flag"] = int(params.get("client_flag", 0)) | flags
        params.setdefault("connect_timeout", 5)
        params["autocommit"] = True
        try:
            conn = wrapper.get_new_connection(params)
            cursor = conn.cursor()
            # No gap locks: the purge's scan must not block inserts of new sessions.
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cursor.close()
        except self._mysql.Error as exc:
            raise _Down(str(exc)) from exc
        return conn

    def classify(self, exc: Exception) -> type[Exception] | None:
        mysql = self._mysql
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code == ER_NO_SUCH_TABLE:
            return _NotInstalled
        if self.read_only(exc):
            return _Down
        if isinstance(exc, (mysql.OperationalError, mysql.InterfaceError)):
            # Gone away, lost connection, shutdown, too many connections, lock wait timeout,
            # deadlock (rolled back: worth trying again), read-only server.
            return _Down
        return None

    def read_only(self, exc: BaseException | None) -> bool:
        return isinstance(exc, self._mysql.Error) and bool(exc.args) and exc.args[0] in READ_ONLY

    def _execute(self, conn: Any, sql: str, params: Sequence[Any], *, prepare: bool = True) -> Any:
        cursor = conn.cursor()
        try:
            cursor.execute(sql, tuple(params))
            return _Outcome(cursor)
        finally:
            try:
                cursor.close()
            except self._mysql.Error:
                pass  # an error already raised; the connection is closed as broken

    def _perform(self, conn: Any, query: Query[T]) -> T:
        try:
            return super()._perform(conn, query)
        except self._mysql.IntegrityError as exc:
            if query.sql == self.sql.insert and exc.args and exc.args[0] == ER_DUP_ENTRY:
                return query.then(0)  # a live session has this key: not created
            raise

    # The contract's reads (writes are in SQLStateProvider).

    def _get_query(self, session_key: str, exclusive: bool) -> Query[Any]:
        sid = self.sid(session_key)
        sql = self.sql.get_exclusive if exclusive else self.sql.get
        return Query(sql, (sid, sid), self._item_or_none, fetch=True)

    def get(self, session_key: str) -> Any:
        if not session_key:
            return None  # Django's exists(None)
        try:
            return self.query(self._get_query(session_key, exclusive=False))
        except SessionStoreUnavailable as exc:
            if not self.refused_write(exc):
                raise
        # A read-only server: the item as stored, without sliding its expiry.
        sid = self.sid(session_key)
        return self.query(Query(self.sql.peek, (sid,), self._item_or_none, fetch=True))

    def get_exclusive(self, session_key: str) -> Any:
        return self.query(self._get_query(session_key, exclusive=True))

    # Purge.

    def now(self) -> Any:
        return self._one(f"SELECT {NOW}", ())[0]

    def _purge_step(
        self, conn: Any, cutoff: Any, since: Any, size: int, *, with_items: bool
    ) -> tuple[int, Any, int, list[tuple[str, Any]]]:
        if "MariaDB" in conn.get_server_info():
            return self._delete_returning(conn, cutoff, since, size, with_items=with_items)
        scan = self.sql.purge_batch_items if with_items else self.sql.purge_scan
        self._execute(conn, "START TRANSACTION", ())
        try:
            rows = self._execute(conn, scan, (cutoff, since, size)).fetchall()
            mine = [row for row in rows if row[0].endswith(self.suffix)]
            removed = 0
            if mine:
                params = (tuple(row[0] for row in mine), cutoff)
                removed = self._execute(conn, self.sql.purge_batch, params).rowcount
            self._execute(conn, "COMMIT", ())
        except BaseException:
            try:
                self._execute(conn, "ROLLBACK", ())
            except self._mysql.Error:
                pass  # the connection is gone; the server rolled back
            raise
        items = [(row[0], row[2]) for row in mine] if with_items else []
        newest = rows[-1][1] if rows else None
        return len(rows), newest, removed, items

    def _delete_returning(
        self, conn: Any, cutoff: Any, since: Any, size: int, *, with_items: bool
    ) -> tuple[int, Any, int, list[tuple[str, Any]]]:
        """MariaDB: a batch is one DELETE of this application's oldest expired rows, which
        returns them (and their payloads for session_end): no scan that locks the rows first,
        which cost as much again as the delete (0.32x clearsessions' rate with it)."""
        sql = self._purge_returning[1 if with_items else 0]
        rows = self._execute(conn, sql, (cutoff, since, self.suffix, size)).fetchall()
        items = [(row[0], row[2]) for row in rows] if with_items else []
        # Only this application's rows count: fewer than a batch means none is left.
        return len(rows), (rows[-1][1] if rows else None), len(rows), items
