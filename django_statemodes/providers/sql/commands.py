"""What ``installsqlstate`` and ``uninstallsqlstate`` share: their options and the target."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from django_statemodes.conf import conf
from django_statemodes.providers.sql import schema


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
