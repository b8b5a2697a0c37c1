"""Fixtures for SQL mode's tests: the tables installed in the PostgreSQL, MariaDB and SQLite test
databases.

Registered as a plugin by tests/conftest.py: ``sql_tables`` and ``make_provider`` are visible to
every test module; import only the constants and helpers (``ALIASES``, ``PG``, ...) from here.
PostgreSQL and MariaDB tests are only defined when the server answers (or
STATEMODES_REQUIRE_SERVICES=1, when they must fail instead): pytest-django creates a test database for every alias a collected
test names, and a missing server would otherwise break the whole run.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import pytest
from django.core.management import call_command
from django.db import connections

from django_statemodes.core import registry
from django_statemodes.providers.sql import SQLStateProvider, provider_for
from tests.conftest import REQUIRE_SERVICES, service_up

PG = "pg"
SQLITE = "statesqlite"
MARIADB = "mariadb"
PG_ENABLED = REQUIRE_SERVICES or service_up("127.0.0.1", 5432)
MARIADB_ENABLED = REQUIRE_SERVICES or (
    service_up("127.0.0.1", 3306) and importlib.util.find_spec("MySQLdb") is not None
)
# PostgreSQL last: some tests take ALIASES[-1] as the production database.
ALIASES = [SQLITE, *([MARIADB] if MARIADB_ENABLED else []), *([PG] if PG_ENABLED else [])]


def enabled_among(*aliases: str) -> list[str]:
    """Return those of ``aliases`` whose server is enabled for this run."""
    return [alias for alias in aliases if alias in ALIASES]


def close_providers() -> None:
    """Close every cached engine provider: a test database cannot be dropped while in use."""
    registry.close_all()


@pytest.fixture(scope="session")
def sql_tables(django_db_setup: Any, django_db_blocker: Any) -> Iterator[list[str]]:
    """Install the session-state tables in every enabled test database."""
    with django_db_blocker.unblock():
        for alias in ALIASES:
            call_command("installsqlstate", database=alias, type="persisted", verbosity=0)
    yield ALIASES
    close_providers()
    for alias in ALIASES:
        connections[alias].close()


class MakeProvider(Protocol):
    """The ``make_provider`` fixture: a provider for an alias (of another application, if named)."""

    def __call__(self, alias: str, app_name: str | None = None) -> SQLStateProvider: ...


@pytest.fixture
def make_provider(sql_tables: list[str]) -> Iterator[MakeProvider]:
    """Build providers for an alias; they are closed after the test."""
    made: list[SQLStateProvider] = []

    def make(alias: str, app_name: str | None = None) -> SQLStateProvider:
        provider = provider_for(alias)
        if app_name is not None:
            provider = type(provider)(alias, app_name=app_name)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


def fetch_one(provider: SQLStateProvider, sql: str, params: Sequence[Any] = ()) -> Any:
    """Run ``sql`` on one of the provider's own autocommit connections; return its first row.

    ``sql`` spells identifiers with double quotes and values with ``%s``; both are translated
    to the provider's dialect (MySQL quotes with backticks, SQLite binds ``?``).
    """
    quote = connections[provider.alias].ops.quote_name
    text = re.sub(r'"([A-Za-z_]+)"', lambda match: quote(match.group(1)), sql)
    text = text.replace("%s", provider.placeholder)
    return provider.run(lambda conn: provider._execute(conn, text, params).fetchone())


def database_name(alias: str) -> str:
    """Return the NAME the test run gave an alias (the test database)."""
    name: str = connections[alias].settings_dict["NAME"]
    return name
