"""The SQL-mode schema: ASP.NET's ``ASPStateTempSessions`` and ``ASPStateTempApplications``.

Same table names, column names and meanings as ``InstallSqlState.sql`` (see ``docs/sql.md``),
with two deliberate differences: ``Timeout`` is in seconds (Django's ``SESSION_COOKIE_AGE``
unit, where ASP.NET stores minutes) and timestamps are ``timestamptz`` on PostgreSQL (UTC
instants). ``--type temp`` maps ASP.NET's tempdb tables, which a SQL Server restart empties, to
PostgreSQL ``UNLOGGED`` tables, which a crash empties.
"""

from __future__ import annotations

from typing import NamedTuple

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
#: Django database vendor -> its dialect's provider class: one module per dialect, so a new
#: database is one new module named here.
DIALECTS = {
    "postgresql": "django_statemodes.providers.sql.postgresql.PostgresStateProvider",
    "sqlite": "django_statemodes.providers.sql.sqlite.SQLiteStateProvider",
    "mysql": "django_statemodes.providers.sql.mysql.MySQLStateProvider",
}
VENDORS = tuple(DIALECTS)


class ColumnTypes(NamedTuple):
    """How a dialect spells the table's column types in DDL."""

    now: str  # the default of Created
    stamp: str  # Created, Expires, LockDate
    local: str  # LockDateLocal
    flag: str  # Locked
    blob: str  # SessionItemShort, SessionItemLong
    length: str  # the byte-length function of the SessionItemShort check
    unlogged: bool = False  # has UNLOGGED tables, for --type temp
    key: str = "varchar(88)"  # SessionId
    table_options: str = ""  # after CREATE TABLE's column list


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
            f"SQL session state supports PostgreSQL, MySQL, MariaDB and SQLite, not "
            f"{connection.vendor} "
            f"(database {connection.alias!r})."
        )


def register_application_statement(connection: BaseDatabaseWrapper) -> str:
    """Return the INSERT of the application row, a no-op when it exists (``TempGetAppID``)."""
    q = connection.ops.quote_name
    insert = f"INSERT INTO {q(APPLICATIONS)} ({q('AppId')}, {q('AppName')}) VALUES (%s, %s) "
    if connection.vendor == "mysql":
        # No ON CONFLICT there; INSERT IGNORE would also hide other errors.
        return insert + f"ON DUPLICATE KEY UPDATE {q('AppId')} = {q('AppId')}"
    return insert + f"ON CONFLICT ({q('AppId')}) DO NOTHING"


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
