"""Checks of SQL mode's settings: E008, E030-E033."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error
from django.db import connections

from django_statemodes.conf import conf
from django_statemodes.providers.sql.schema import VENDORS
from django_statemodes.test import is_runner_memory_database, testing

from .common import ENGINE_PREFIX

ENGINE = ENGINE_PREFIX + "sql"


def check_sql() -> list[CheckMessage]:
    """Check the database alias and SQL mode's numbers in SQL mode."""
    if settings.SESSION_ENGINE != ENGINE:
        return []
    return [*_check_database(), *_check_numbers()]


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
                "mode supports PostgreSQL and SQLite.",
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
