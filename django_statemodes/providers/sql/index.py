"""SQL mode's index of sessions by user: four nullable columns and an index, per dialect.

Schema version 2 adds to ``ASPStateTempSessions``: ``UserId`` (indexed by ``Index_UserId``),
``IpAddress``, ``UserAgent`` and ``LastSeen``. ``installsqlstate`` creates them with new tables
and adds them to tables of version 1 in place (``upgrade_statements``); the existing
statements never name them, so a version-1 table keeps working while the index is off.

A row's binding counts only while ``LastSeen >= Created``: a bind sets ``LastSeen`` to now, and
the insert that replaces an expired row under the same key (an old key brought back) sets
``Created`` to now, so a binding left on the old row is never taken for the new session's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from django.db.backends.base.base import BaseDatabaseWrapper

from .schema import SESSIONS, ColumnTypes

__all__ = [
    "INDEX_USER_ID",
    "SCHEMA_VERSION",
    "IndexStatements",
    "column_ddl",
    "index_statements",
    "installed_version",
    "upgrade_statements",
]

#: The schema's version: 1 is ASP.NET's columns; 2 adds the index of sessions by user.
SCHEMA_VERSION = 2
INDEX_USER_ID = "Index_UserId"
#: Longest stored values (the core and the memory store cut to the same lengths).
USER_ID_LENGTH, IP_LENGTH, USER_AGENT_LENGTH = 255, 64, 512
COLUMNS = ("UserId", "IpAddress", "UserAgent", "LastSeen")


def column_ddl(types: ColumnTypes, q: Callable[[str], str]) -> list[str]:
    """The version-2 columns, as CREATE TABLE and ALTER TABLE ... ADD COLUMN spell them."""
    text = " CHARACTER SET utf8mb4" if "InnoDB" in types.table_options else ""
    return [
        f"{q('UserId')} varchar({USER_ID_LENGTH}){text} NULL",
        f"{q('IpAddress')} varchar({IP_LENGTH}){text} NULL",
        f"{q('UserAgent')} varchar({USER_AGENT_LENGTH}){text} NULL",
        f"{q('LastSeen')} {types.stamp} NULL",
    ]


def index_ddl(q: Callable[[str], str]) -> str:
    return f"CREATE INDEX {q(INDEX_USER_ID)} ON {q(SESSIONS)} ({q('UserId')})"


def installed_version(connection: BaseDatabaseWrapper) -> int:
    """Return the installed sessions table's schema version (1 or 2); 0 if it is missing."""
    with connection.cursor() as cursor:
        if SESSIONS not in connection.introspection.table_names(cursor):
            return 0
        names = {
            column.name
            for column in connection.introspection.get_table_description(cursor, SESSIONS)
        }
    return SCHEMA_VERSION if all(name in names for name in COLUMNS) else 1


def upgrade_statements(connection: BaseDatabaseWrapper, types: ColumnTypes) -> list[str]:
    """Return the DDL that brings an installed sessions table to ``SCHEMA_VERSION``."""
    q = connection.ops.quote_name
    with connection.cursor() as cursor:
        if SESSIONS not in connection.introspection.table_names(cursor):
            return []
        names = {
            column.name
            for column in connection.introspection.get_table_description(cursor, SESSIONS)
        }
        constraints = connection.introspection.get_constraints(cursor, SESSIONS)
    missing = [
        ddl for name, ddl in zip(COLUMNS, column_ddl(types, q), strict=True) if name not in names
    ]
    statements = [f"ALTER TABLE {q(SESSIONS)} ADD COLUMN {ddl}" for ddl in missing]
    if INDEX_USER_ID not in constraints:
        statements.append(index_ddl(q))
    return statements


class IndexStatements(NamedTuple):
    """The index's statements for one dialect."""

    bind: str  # params: user id, ip, user agent, sid
    touch: str  # params: ip, user agent, sid
    unbind: str  # params: sid
    by_user: str  # params: user id, suffix
    page: str  # params: suffix, limit, offset
    page_of_user: str  # params: user id, suffix, limit, offset
    total: str  # params: suffix
    total_of_user: str  # params: user id, suffix


class _Spelling(NamedTuple):
    now: str
    epoch: Callable[[str], str]  # a timestamp column -> unix seconds
    length: str
    right: str  # the last 8 characters of SessionId (its application suffix)
    placeholder: str
    #: The table as UPDATEs by key name it (MySQL: forced through the primary key, see mysql.py).
    keyed: str = "{}"


_SPELLINGS = {
    "postgresql": _Spelling(
        "now()", lambda c: f"extract(epoch FROM {c})::float8", "octet_length", "right({}, 8)", "%s"
    ),
    "sqlite": _Spelling(
        "strftime('%Y-%m-%d %H:%M:%f', 'now')",
        lambda c: f"(julianday({c}) - 2440587.5) * 86400.0",
        "length",
        "substr({}, -8)",
        "?",
    ),
    "mysql": _Spelling(
        "UTC_TIMESTAMP(6)",
        lambda c: f"TIMESTAMPDIFF(MICROSECOND, '1970-01-01', {c}) / 1000000",
        "length",
        "RIGHT({}, 8)",
        "%s",
        "{} FORCE INDEX (PRIMARY)",
    ),
}


def index_statements(vendor: str, q: Callable[[str], str]) -> IndexStatements:
    """Return the index's statements in ``vendor``'s dialect (``q`` quotes an identifier)."""
    s = _SPELLINGS[vendor]
    p = s.placeholder
    t, sid, expires = q(SESSIONS), q("SessionId"), q("Expires")
    user, ip, agent, seen = q("UserId"), q("IpAddress"), q("UserAgent"), q("LastSeen")
    created, locked, lock_date = q("Created"), q("Locked"), q("LockDate")
    short, long = q("SessionItemShort"), q("SessionItemLong")
    keyed = s.keyed.format(t)
    live = f"{expires} > {s.now}"
    bound = f"{user} IS NOT NULL AND {seen} >= {created}"
    mine = f"{s.right.format(sid)} = {p}"
    age = f"{s.epoch(s.now)} - {s.epoch(lock_date)}"
    size = f"coalesce({s.length}({short}), {s.length}({long}), 0)"
    columns = (
        f"{sid}, CASE WHEN {bound} THEN {user} ELSE '' END, {s.epoch(created)}, "
        f"CASE WHEN {bound} THEN {s.epoch(seen)} ELSE {s.epoch(created)} END, "
        f"{s.epoch(expires)}, CASE WHEN {bound} THEN {ip} END, "
        f"CASE WHEN {bound} THEN {agent} END, {locked}, "
        f"CASE WHEN {locked} THEN {age} ELSE 0 END, {size}"
    )
    select = f"SELECT {columns} FROM {t}"
    return IndexStatements(
        bind=(
            f"UPDATE {keyed} SET {user} = {p}, {ip} = {p}, {agent} = {p}, {seen} = {s.now} "
            f"WHERE {sid} = {p} AND {live}"
        ),
        touch=(
            f"UPDATE {keyed} SET {seen} = {s.now}, {ip} = coalesce({p}, {ip}), "
            f"{agent} = coalesce({p}, {agent}) WHERE {sid} = {p} AND {live} AND {bound}"
        ),
        unbind=(
            f"UPDATE {keyed} SET {user} = NULL, {ip} = NULL, {agent} = NULL, {seen} = NULL "
            f"WHERE {sid} = {p}"
        ),
        by_user=f"{select} WHERE {user} = {p} AND {bound} AND {live} AND {mine}",
        page=f"{select} WHERE {live} AND {mine} ORDER BY {expires} DESC LIMIT {p} OFFSET {p}",
        page_of_user=(
            f"{select} WHERE {user} = {p} AND {bound} AND {live} AND {mine} "
            f"ORDER BY {expires} DESC LIMIT {p} OFFSET {p}"
        ),
        total=f"SELECT count(*) FROM {t} WHERE {live} AND {mine}",
        total_of_user=(
            f"SELECT count(*) FROM {t} WHERE {user} = {p} AND {bound} AND {live} AND {mine}"
        ),
    )
