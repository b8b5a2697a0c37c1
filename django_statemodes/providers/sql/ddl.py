"""The DDL of ``installsqlstate`` and ``uninstallsqlstate``, spelled by each dialect."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.module_loading import import_string

from . import index
from .base import SQLStateProvider
from .schema import (
    APPLICATIONS,
    DIALECTS,
    INDEX_APP_NAME,
    INDEX_EXPIRES,
    ITEM_SHORT_LENGTH,
    SESSIONS,
    TABLES,
    TEMP,
    TYPES,
    ColumnTypes,
    check_vendor,
)

__all__ = [
    "dialect",
    "existing_tables",
    "install_statements",
    "persistence",
    "uninstall_statements",
    "upgrade_statements",
]


def dialect(vendor: str) -> type[SQLStateProvider]:
    """Return the provider class of a database vendor's dialect."""
    provider_class: type[SQLStateProvider] = import_string(DIALECTS[vendor])
    return provider_class


def _columns(types: ColumnTypes, q: Callable[[str], str]) -> list[str]:
    now, stamp, local, flag, blob, length = types[:6]
    short = q("SessionItemShort")
    return [
        f"{q('SessionId')} {types.key} NOT NULL PRIMARY KEY",
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
        # Schema version 2: the index of sessions by user.
        *index.column_ddl(types, q),
    ]


def install_statements(
    connection: BaseDatabaseWrapper, type_: str = TEMP, tables: Iterable[str] = TABLES
) -> list[str]:
    """Return the DDL that creates the given tables (both by default) and their indexes."""
    check_vendor(connection)
    if type_ not in TYPES:
        raise ValueError(f"type must be one of {', '.join(TYPES)}, not {type_!r}")
    q = connection.ops.quote_name
    types = dialect(connection.vendor).column_types
    unlogged = "UNLOGGED " if types.unlogged and type_ == TEMP else ""
    columns = ",\n    ".join(_columns(types, q))
    options = types.table_options
    ddl = {
        SESSIONS: [
            f"CREATE {unlogged}TABLE {q(SESSIONS)} (\n    {columns}\n){options}",
            f"CREATE INDEX {q(INDEX_EXPIRES)} ON {q(SESSIONS)} ({q('Expires')})",
            index.index_ddl(q),
        ],
        APPLICATIONS: [
            f"CREATE {unlogged}TABLE {q(APPLICATIONS)} (\n"
            f"    {q('AppId')} integer NOT NULL PRIMARY KEY,\n"
            f"    {q('AppName')} varchar(280) NOT NULL\n){options}",
            f"CREATE INDEX {q(INDEX_APP_NAME)} ON {q(APPLICATIONS)} ({q('AppName')})",
        ],
    }
    return [sql for table in TABLES if table in tables for sql in ddl[table]]


def upgrade_statements(connection: BaseDatabaseWrapper) -> list[str]:
    """Return the DDL that upgrades installed tables to the current schema version (or [])."""
    check_vendor(connection)
    return index.upgrade_statements(connection, dialect(connection.vendor).column_types)


def uninstall_statements(
    connection: BaseDatabaseWrapper, tables: Iterable[str] = TABLES
) -> list[str]:
    """Return the DDL that drops the given tables (their indexes go with them)."""
    check_vendor(connection)
    q = connection.ops.quote_name
    return [f"DROP TABLE {q(table)}" for table in TABLES if table in tables]


def existing_tables(connection: BaseDatabaseWrapper) -> set[str]:
    """Return which of the two tables exist (exact, case-sensitive names)."""
    with connection.cursor() as cursor:
        names = set(connection.introspection.table_names(cursor))
    return {name for name in TABLES if name in names}


def persistence(connection: BaseDatabaseWrapper, table: str) -> str | None:
    """Return TEMP or PERSISTED for an installed table, None if it is missing."""
    return dialect(connection.vendor).table_persistence(connection, table)
