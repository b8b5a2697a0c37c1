"""System checks for SQL mode (ids ``django_statemodes.E030``-``E039``)."""

from __future__ import annotations

from django.core.checks import CheckMessage, Error
from django.db import connections

from django_statemodes.conf import conf
from django_statemodes.providers.sql.schema import VENDORS


def check_sql_settings() -> list[CheckMessage]:
    """Checks that apply when SESSION_ENGINE is SQL mode (E008 covers an unknown alias)."""
    errors: list[CheckMessage] = []
    alias = conf.STATEMODES_SQL_DATABASE
    if alias in connections:
        connection = connections[alias]
        if connection.vendor not in VENDORS:
            errors.append(
                Error(
                    f"STATEMODES_SQL_DATABASE {alias!r} is a {connection.vendor} database; SQL "
                    "mode supports PostgreSQL and SQLite.",
                    id="django_statemodes.E030",
                )
            )
        elif connection.vendor == "sqlite" and connection.is_in_memory_db():  # type: ignore[attr-defined]
            errors.append(
                Error(
                    f"STATEMODES_SQL_DATABASE {alias!r} is an in-memory SQLite database.",
                    hint="Each thread has its own connection: use a file (and WAL), see "
                    "docs/sql.md.",
                    id="django_statemodes.E031",
                )
            )
    retry: object = conf.STATEMODES_SQL_RETRY_INTERVAL
    if isinstance(retry, bool) or not isinstance(retry, (int, float)) or retry < 0:
        errors.append(
            Error(
                "STATEMODES_SQL_RETRY_INTERVAL should be a number of seconds, 0 or more.",
                hint="ASP.NET's sqlConnectionRetryInterval; 0 means no retry.",
                id="django_statemodes.E032",
            )
        )
    batch: object = conf.STATEMODES_PURGE_BATCH_SIZE
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        errors.append(
            Error(
                "STATEMODES_PURGE_BATCH_SIZE should be a positive integer.",
                id="django_statemodes.E033",
            )
        )
    return errors
