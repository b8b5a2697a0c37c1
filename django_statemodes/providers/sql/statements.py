"""The SQL-mode statements, one per ASP.NET stored procedure, per dialect.

Identifiers are quoted with the connection's ``ops.quote_name``; values are always parameters.
PostgreSQL and MySQL statements use ``%s`` (psycopg, mysqlclient), SQLite ones ``?``
(sqlite3); all run on the
provider's own autocommit connections, never through the ORM.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    holds: str  # does lock cookie N still hold the item?
    wait: str  # PostgreSQL: the same check, marking the item as awaited (FLAG_WAITERS)
    count_expired: str
    # DeleteExpiredSessions, one batch: PostgreSQL a range of Expires, SQLite the scanned rows
    # of this application.
    purge_batch: str
    purge_batch_items: str  # the same, returning keys and payloads for session_end
    purge_scan: str  # the batch's end (PostgreSQL) or rows (SQLite), oldest first
    peek: str = ""  # PostgreSQL: the item without sliding it (a read-only database)
