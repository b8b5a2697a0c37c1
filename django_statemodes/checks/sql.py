"""Checks of SQL mode's settings: E008, E030-E035, W030-W032."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.db import connections

from django_statemodes.conf import conf
from django_statemodes.providers.sql.commands import routed_here
from django_statemodes.providers.sql.schema import VENDORS
from django_statemodes.test import is_runner_memory_database, testing

from .common import ENGINE_PREFIX

ENGINE = ENGINE_PREFIX + "sql"


def check_sql() -> list[CheckMessage]:
    """Check the database alias and SQL mode's numbers in SQL mode."""
    if settings.SESSION_ENGINE != ENGINE:
        return []
    return [
        *_check_database(),
        *_check_numbers(),
        *_check_pooler(),
        *_check_read_only(),
        *_check_routers(),
    ]


def _check_database() -> list[CheckMessage]:
    alias = conf.STATEMODES_SQL_DATABASE
    if alias not in connections:
        return [
            Error(
                f"STATEMODES_SQL_DATABASE {alias!r} is not in DATABASES.",
                hint="Name an alias of DATABASES; run 'manage.py installsqlstate' for it.",
                id="django_statemodes.E008",
            )
        ]
    connection = connections[alias]
    if connection.vendor not in VENDORS:
        return [
            Error(
                f"STATEMODES_SQL_DATABASE {alias!r} is a {connection.vendor} database; SQL "
                "mode supports PostgreSQL, MySQL, MariaDB and SQLite.",
                id="django_statemodes.E030",
            )
        ]
    if connection.vendor == "sqlite" and _in_memory_outside_tests(connection):
        return [
            Error(
                f"STATEMODES_SQL_DATABASE {alias!r} is an in-memory SQLite database.",
                hint="Each thread has its own connection: use a file (and WAL), see docs/sql.md.",
                id="django_statemodes.E031",
            )
        ]
    return []


def _check_pooler() -> list[CheckMessage]:
    pooler: object = conf.STATEMODES_SQL_POOLER
    listen: object = conf.STATEMODES_SQL_LISTEN_DATABASE
    errors: list[CheckMessage] = []
    if pooler not in (None, "transaction"):
        errors.append(
            Error(
                f"STATEMODES_SQL_POOLER should be None or 'transaction', not {pooler!r}.",
                hint="'transaction' when the alias goes through PgBouncer in transaction pooling.",
                id="django_statemodes.E034",
            )
        )
    if listen is not None and (
        not isinstance(listen, str)
        or listen not in connections
        or connections[listen].vendor != "postgresql"
    ):
        errors.append(
            Error(
                f"STATEMODES_SQL_LISTEN_DATABASE {listen!r} is not a PostgreSQL alias of "
                "DATABASES.",
                hint="Name a direct (not pooled) alias to the sessions' database, or None.",
                id="django_statemodes.E035",
            )
        )
    if pooler == "transaction" and listen is None:
        errors.append(
            Warning(
                "STATEMODES_SQL_POOLER is 'transaction' and STATEMODES_SQL_LISTEN_DATABASE is "
                "not set: requests waiting for a session lock re-check it (1-16 ms back-off) "
                "instead of being woken.",
                hint="Name a direct alias to the same database, bypassing the pooler.",
                id="django_statemodes.W030",
            )
        )
    return errors


def _check_read_only() -> list[CheckMessage]:
    # Known from the settings alone (no connection at check time): the alias's OPTIONS make
    # every transaction read-only, as for a replica.
    alias = conf.STATEMODES_SQL_DATABASE
    if alias not in connections:
        return []
    options = connections[alias].settings_dict.get("OPTIONS") or {}
    text = " ".join(str(options.get(key, "")) for key in ("options", "init_command")).lower()
    compact = text.replace(" ", "")
    if "default_transaction_read_only=on" in compact or "transactionreadonly" in compact:
        return [
            Warning(
                f"STATEMODES_SQL_DATABASE {alias!r} is read-only (its OPTIONS): every request "
                "that locks or saves a session will get a 503.",
                hint="Point SQL mode at the primary (writable) database.",
                id="django_statemodes.W031",
            )
        ]
    return []


def _check_routers() -> list[CheckMessage]:
    # The routers decide where installsqlstate may create the tables; the provider goes where
    # STATEMODES_SQL_DATABASE says. A disagreement means tables that are never installed there.
    alias = conf.STATEMODES_SQL_DATABASE
    if alias not in connections or routed_here(alias):
        return []
    return [
        Warning(
            f"The database routers keep the session-state tables out of STATEMODES_SQL_DATABASE "
            f"{alias!r}: installsqlstate will not create them there.",
            hint="Name the alias your routers allow for the django_statemodes app, or let a "
            "router's allow_migrate() accept it.",
            id="django_statemodes.W032",
        )
    ]


def _in_memory_outside_tests(connection: Any) -> bool:
    # The test runner's in-memory database is a shared-cache URI: every connection of the one
    # test process sees it, so the providers' connections and the test's agree. ':memory:' (or
    # that URI outside a test run) is a private or throw-away database per connection.
    if not connection.is_in_memory_db():
        return False
    name = connection.settings_dict["NAME"]
    return not (testing() and is_runner_memory_database(name))


def _check_numbers() -> list[CheckMessage]:
    errors: list[CheckMessage] = []
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
