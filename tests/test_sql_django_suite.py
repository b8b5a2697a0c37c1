"""Django's own session tests against SQL mode, on SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import TestCase, override_settings

from django_statemodes.backends.sql import SessionStore
from tests.django_suite import make_django_suite
from tests.fixtures_sql import MARIADB, MARIADB_ENABLED, PG, PG_ENABLED, SQLITE

ENGINE = "django_statemodes.backends.sql"


@pytest.fixture(autouse=True)
def _tables(sql_tables: list[str]) -> None:
    """Every test here needs the session-state tables."""


def _suite(alias: str) -> tuple[Any, Any]:
    session_tests, middleware_tests = make_django_suite(
        ENGINE, SessionStore, base=TestCase, databases={"default", alias}
    )
    settings = override_settings(STATEMODES_SQL_DATABASE=alias)
    return settings(session_tests), settings(middleware_tests)


SQLiteSessionTests, SQLiteMiddlewareTests = _suite(SQLITE)
SQLiteSessionTests.__name__ = "DjangoSqlSQLiteSessionTests"
SQLiteMiddlewareTests.__name__ = "DjangoSqlSQLiteMiddlewareTests"

if PG_ENABLED:
    PostgresSessionTests, PostgresMiddlewareTests = _suite(PG)
    PostgresSessionTests.__name__ = "DjangoSqlPostgresSessionTests"
    PostgresMiddlewareTests.__name__ = "DjangoSqlPostgresMiddlewareTests"

if MARIADB_ENABLED:
    MariaDBSessionTests, MariaDBMiddlewareTests = _suite(MARIADB)
    MariaDBSessionTests.__name__ = "DjangoSqlMariaDBSessionTests"
    MariaDBMiddlewareTests.__name__ = "DjangoSqlMariaDBMiddlewareTests"
