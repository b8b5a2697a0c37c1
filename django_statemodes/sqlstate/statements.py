"""The SQL-mode statements, one per ASP.NET stored procedure, for PostgreSQL and SQLite.

Identifiers are quoted with the connection's ``ops.quote_name``; values are always parameters.
PostgreSQL statements use ``%s`` (psycopg), SQLite ones ``?`` (sqlite3); both run on the
provider's own autocommit connections, never through the ORM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django_statemodes.sqlstate.schema import FLAG_UNINITIALIZED, FLAG_WAITERS, SESSIONS

# Payload channel of the NOTIFY sent when a lock is released; the payload is the SessionId.
CHANNEL = "statemodes_release"


@dataclass(frozen=True)
class Statements:
    """Statement texts for one dialect (unused ones are empty)."""

    get: str  # TempGetStateItem3; PostgreSQL: one UPDATE ... RETURNING
    get_exclusive: str  # TempGetStateItemExclusive3; PostgreSQL: one UPDATE ... RETURNING
    lock: str  # SQLite: take the lock after the read, in the same transaction
    slide: str  # SQLite: slide Expires (and clear Flags) after the read
    insert: str  # TempInsertStateItemShort/Long and TempInsertUninitializedItem
    update_release: str  # TempUpdateStateItem*: write, unlock, cookie checked
    update_keep: str  # the same, keeping the lock (a mid-request save)
    update_any: str  # unconditional write (Django's last-write-wins, outside a request)
    release: str  # TempReleaseStateItemExclusive
    remove: str  # TempRemoveStateItem, cookie checked
    remove_any: str
    reset_timeout: str  # TempResetTimeout
    holds: str  # does lock cookie N still hold the item?
    wait: str  # PostgreSQL: the same check, marking the item as awaited (FLAG_WAITERS)
    count_expired: str
    # DeleteExpiredSessions, one batch: PostgreSQL a range of Expires, SQLite the scanned rows
    # of this application.
    purge_batch: str
    purge_batch_items: str  # the same, returning keys and payloads for session_end
    purge_scan: str  # the batch's end (PostgreSQL) or rows (SQLite), oldest first


def postgres(q: Callable[[str], str]) -> Statements:
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
        reset_timeout=f"UPDATE {t} SET {slide} WHERE {sid} = %s AND {expires} > now()",
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


# SQLite keeps timestamps as text in Django's format, in UTC, to the millisecond.
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def sqlite(q: Callable[[str], str]) -> Statements:
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
        reset_timeout=f"UPDATE {t} SET {slide} WHERE {sid} = ? AND {expires} > {now}",
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
