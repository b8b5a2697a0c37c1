"""The conformance kit over SQL mode: provider and engine, on PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from django_statemodes.backends.sql import SessionStore
from django_statemodes.providers.sql import SQLStateProvider
from django_statemodes.testing import EngineContract, ProviderContract
from tests.fixtures_sql import ALIASES, MakeProvider

pytestmark = pytest.mark.django_db(databases=["default", *ALIASES])


class TestSQLProvider(ProviderContract):
    @pytest.fixture(params=ALIASES)
    def provider(self, request: Any, make_provider: MakeProvider) -> Iterator[SQLStateProvider]:
        yield make_provider(request.param)


class TestSQLEngine(EngineContract):
    @pytest.fixture(params=ALIASES)
    def engine(self, request: Any, settings: Any, sql_tables: list[str]) -> type[SessionStore]:
        settings.SESSION_ENGINE = "django_statemodes.backends.sql"
        settings.STATEMODES_SQL_DATABASE = request.param
        return SessionStore
