"""The SQL-mode schema: ASP.NET's ``ASPStateTempSessions`` and ``ASPStateTempApplications``.

Same table names, column names and meanings as ``InstallSqlState.sql`` (see ``docs/sql.md``),
with two deliberate differences: ``Timeout`` is in seconds (Django's ``SESSION_COOKIE_AGE``
unit, where ASP.NET stores minutes) and timestamps are ``timestamptz`` on PostgreSQL (UTC
instants). ``--type temp`` maps ASP.NET's tempdb tables, which a SQL Server restart empties, to
PostgreSQL ``UNLOGGED`` tables, which a crash empties.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from django.db.backends.base.base import BaseDatabaseWrapper

from django_statemodes.exceptions import SQLStateNotInstalled

SESSIONS = "ASPStateTempSessions"
APPLICATIONS = "ASPStateTempApplications"
TABLES = (SESSIONS, APPLICATIONS)
INDEX_EXPIRES = "Index_Expires"
INDEX_APP_NAME = "Index_AppName"

# ASP.NET keeps payloads up to 7000 bytes inline in SessionItemShort, larger ones in
# SessionItemLong (sqlstateclientmanager.cs ITEM_SHORT_LENGTH).
ITEM_SHORT_LENGTH = 7000
# ASP.NET's Flags bit 1: an item made by CreateUninitializedItem, not read yet.
FLAG_UNINITIALIZED = 1
# Ours (PostgreSQL): a request is waiting for the lock, so its release must NOTIFY. Set by the
# waiter while the lock is held, cleared by the next lock; releases without waiters skip NOTIFY.
FLAG_WAITERS = 2

TEMP = "temp"
PERSISTED = "persisted"
TYPES = (TEMP, PERSISTED)
# The vendors with a dialect module (providers/sql/__init__.py DIALECTS).
VENDORS = ("postgresql", "sqlite")

COMMAND_SETTING = "STATEMODES_SQL_DATABASE"


def not_installed(alias: str) -> SQLStateNotInstalled:
    return SQLStateNotInstalled(
        f"The SQL session-state tables ({SESSIONS}, {APPLICATIONS}) are not installed in "
        f"database {alias!r}. Run 'manage.py installsqlstate --database {alias}'."
    )


def app_id(app_name: str) -> int:
    """Return ASP.NET's AppId for an application name (``TempGetAppID``'s ``GetHashCode``).

    The name is lowercased, then hashed with ASP.NET's djb2 variant
    (``hash = ((hash << 5) + hash) ^ char``) and wrapped to a signed 32-bit int.
    """
    value = 5381
    for char in app_name.lower():
        value = (((value << 5) + value) ^ ord(char)) & 0xFFFFFFFF
    return value - 0x100000000 if value >= 0x80000000 else value


def app_suffix(app_id_: int) -> str:
    """Return the 8 hex digits ASP.NET appends to every SessionId (``ToString("x8")``)."""
    return format(app_id_ & 0xFFFFFFFF, "08x")


def check_vendor(connection: BaseDatabaseWrapper) -> None:
    if connection.vendor not in VENDORS:
        raise ValueError(
            f"SQL session state supports PostgreSQL and SQLite, not {connection.vendor} "
            f"(database {connection.alias!r})."
        )


def _columns(vendor: str, q: Callable[[str], str]) -> list[str]:
    if vendor == "postgresql":
        now, stamp, local, flag, blob = "now()", "timestamptz", "timestamp", "boolean", "bytea"
        length = "octet_length"
    else:
        # Text in Django's SQLite datetime format, so the ORM (the admin) reads it back.
        now = "(strftime('%Y-%m-%d %H:%M:%f', 'now'))"
        stamp = local = "text"
        flag, blob, length = "integer", "blob", "length"
    short = q("SessionItemShort")
    return [
        f"{q('SessionId')} varchar(88) NOT NULL PRIMARY KEY",
        f"{q('Created')} {stamp} NOT NULL DEFAULT {now}",
        f"{q('Expires')} {stamp} NOT NULL",
        f"{q('LockDate')} {stamp} NOT NULL",
        f"{q('LockDateLocal')} {local} NOT NULL",
        f"{q('LockCookie')} integer NOT NULL",
        f"{q('Timeout')} integer NOT NULL",
        f"{q('Locked')} {flag} NOT NULL",
        f"{short} {blob} NULL CHECK ({length}({short}) <= {ITEM_SHORT_LENGTH})",
        f"{q('SessionItemLong')} {blob} NULL",
        f"{q('Flags')} integer NOT NULL DEFAULT 0",
    ]


def install_statements(
    connection: BaseDatabaseWrapper, type_: str = TEMP, tables: Iterable[str] = TABLES
) -> list[str]:
    """Return the DDL that creates the given tables (both by default) and their indexes."""
    check_vendor(connection)
    if type_ not in TYPES:
        raise ValueError(f"type must be one of {', '.join(TYPES)}, not {type_!r}")
    q = connection.ops.quote_name
    unlogged = "UNLOGGED " if connection.vendor == "postgresql" and type_ == TEMP else ""
    columns = ",\n    ".join(_columns(connection.vendor, q))
    ddl = {
        SESSIONS: [
            f"CREATE {unlogged}TABLE {q(SESSIONS)} (\n    {columns}\n)",
            f"CREATE INDEX {q(INDEX_EXPIRES)} ON {q(SESSIONS)} ({q('Expires')})",
        ],
        APPLICATIONS: [
            f"CREATE {unlogged}TABLE {q(APPLICATIONS)} (\n"
            f"    {q('AppId')} integer NOT NULL PRIMARY KEY,\n"
            f"    {q('AppName')} varchar(280) NOT NULL\n)",
            f"CREATE INDEX {q(INDEX_APP_NAME)} ON {q(APPLICATIONS)} ({q('AppName')})",
        ],
    }
    return [sql for table in TABLES if table in tables for sql in ddl[table]]


def uninstall_statements(
    connection: BaseDatabaseWrapper, tables: Iterable[str] = TABLES
) -> list[str]:
    """Return the DDL that drops the given tables (their indexes go with them)."""
    check_vendor(connection)
    q = connection.ops.quote_name
    return [f"DROP TABLE {q(table)}" for table in TABLES if table in tables]


def register_application_statement(connection: BaseDatabaseWrapper) -> str:
    """Return the INSERT of the application row, a no-op when it exists (``TempGetAppID``)."""
    q = connection.ops.quote_name
    return (
        f"INSERT INTO {q(APPLICATIONS)} ({q('AppId')}, {q('AppName')}) VALUES (%s, %s) "
        f"ON CONFLICT ({q('AppId')}) DO NOTHING"
    )


def application_name_statement(connection: BaseDatabaseWrapper) -> str:
    q = connection.ops.quote_name
    return f"SELECT {q('AppName')} FROM {q(APPLICATIONS)} WHERE {q('AppId')} = %s"


def collision(app_name: str, stored: str) -> str:
    # ASP.NET's own wording, so the fix is the same: rename one application.
    return (
        f"SQL session state fatal error: hash-code collision between applications "
        f"{stored!r} and {app_name!r}. Please rename the 1st application to resolve the "
        "problem (STATEMODES_APPLICATION_NAME)."
    )


def existing_tables(connection: BaseDatabaseWrapper) -> set[str]:
    """Return which of the two tables exist (exact, case-sensitive names)."""
    with connection.cursor() as cursor:
        names = set(connection.introspection.table_names(cursor))
    return {name for name in TABLES if name in names}


def persistence(connection: BaseDatabaseWrapper, table: str) -> str | None:
    """Return TEMP or PERSISTED for a PostgreSQL table (``pg_class.relpersistence``)."""
    if connection.vendor != "postgresql":
        return PERSISTED
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relpersistence FROM pg_class WHERE oid = to_regclass(%s)",
            [connection.ops.quote_name(table)],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    return TEMP if row[0] == "u" else PERSISTED
