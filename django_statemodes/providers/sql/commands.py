"""What ``installsqlstate``, ``uninstallsqlstate`` and test databases share."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from django_statemodes.conf import conf
from django_statemodes.providers.sql import ddl, schema


def add_common_arguments(parser: CommandParser, verb: str) -> None:
    parser.add_argument(
        "--database",
        default=None,
        help=f"The DATABASES alias to {verb} (default: STATEMODES_SQL_DATABASE).",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Print the SQL that would be run (aspnet_regsql -sqlexportonly); change nothing.",
    )


def target(options: dict[str, Any]) -> tuple[str, BaseDatabaseWrapper]:
    """Return the alias and connection the command works on, or raise CommandError."""
    alias: str = options["database"] or conf.STATEMODES_SQL_DATABASE or DEFAULT_DB_ALIAS
    if alias not in connections:
        raise CommandError(f"Database {alias!r} is not in DATABASES.")
    connection = connections[alias]
    try:
        schema.check_vendor(connection)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return alias, connection


def routed_here(alias: str) -> bool:
    """Return True unless a database router keeps the session-state tables out of ``alias``.

    The models are unmanaged (no migrations), which ``allow_migrate_model`` always refuses:
    the routers are asked directly, with the model as a hint.
    """
    from django_statemodes.models import SessionState

    meta = SessionState._meta
    return bool(
        router.allow_migrate(alias, meta.app_label, model_name=meta.model_name, model=SessionState)
    )


def install(alias: str, type_: str = schema.TEMP) -> list[str]:
    """Create the tables missing from ``alias`` in one transaction; return their names."""
    connection = connections[alias]
    missing = [table for table in schema.TABLES if table not in ddl.existing_tables(connection)]
    # Tables of an earlier schema version are upgraded in place (ALTER TABLE ... ADD COLUMN).
    statements = ddl.install_statements(connection, type_, missing) + (
        [] if schema.SESSIONS in missing else ddl.upgrade_statements(connection)
    )
    if statements:
        # Both tables or neither where DDL is transactional (PostgreSQL, SQLite; not MySQL).
        atomic = transaction.atomic(using=alias, savepoint=connection.features.can_rollback_ddl)
        with atomic, connection.cursor() as cursor:
            for sql in statements:
                cursor.execute(sql)
    return missing
