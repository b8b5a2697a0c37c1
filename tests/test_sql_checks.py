"""System checks of SQL mode (E030-E033)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail
from django.db import connections

from django_statemodes.checks import check_settings

SQL = "django_statemodes.backends.sql"


def ids() -> set[str]:
    return {message.id for message in check_settings() if message.id}


@pytest.fixture
def sql(settings: Any) -> Any:
    settings.SESSION_ENGINE = SQL
    settings.STATEMODES_SQL_DATABASE = "statesqlite"
    return settings


def test_a_good_configuration_has_no_sql_errors(sql: Any) -> None:
    assert not {i for i in ids() if i.startswith("django_statemodes.E03")}


RUNNER_MEMORY_DB = "file:memorydb_statesqlite?mode=memory&cache=shared"


@pytest.mark.parametrize("name", [":memory:", "file:sessions?mode=memory"])
def test_an_in_memory_sqlite_database_is_refused(
    sql: Any, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setitem(connections["statesqlite"].settings_dict, "NAME", name)
    assert "django_statemodes.E031" in ids()


def test_the_test_runners_in_memory_database_is_allowed(
    sql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Django's runner gives ':memory:' this shared-cache URI; the check runs after that.
    monkeypatch.setitem(connections["statesqlite"].settings_dict, "NAME", RUNNER_MEMORY_DB)
    assert "django_statemodes.E031" not in ids()


def test_the_runners_name_is_refused_outside_a_test_run(
    sql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(connections["statesqlite"].settings_dict, "NAME", RUNNER_MEMORY_DB)
    monkeypatch.delattr(mail, "outbox")  # as after teardown_test_environment()
    assert "django_statemodes.E031" in ids()


@pytest.mark.parametrize("value", [-1, "5", None, True])
def test_the_retry_interval_must_be_a_non_negative_number(sql: Any, value: Any) -> None:
    sql.STATEMODES_SQL_RETRY_INTERVAL = value
    assert "django_statemodes.E032" in ids()


@pytest.mark.parametrize("value", [0, -5, 2.5, "100"])
def test_the_purge_batch_size_must_be_a_positive_integer(sql: Any, value: Any) -> None:
    sql.STATEMODES_PURGE_BATCH_SIZE = value
    assert "django_statemodes.E033" in ids()


def test_the_checks_only_run_for_sql_mode(settings: Any) -> None:
    settings.SESSION_ENGINE = "django_statemodes.backends.inproc"
    settings.STATEMODES_PURGE_BATCH_SIZE = 0
    assert "django_statemodes.E033" not in ids()


def test_a_pooler_setting_is_checked(sql: Any) -> None:
    sql.STATEMODES_SQL_POOLER = "statement"
    assert "django_statemodes.E034" in ids()
    sql.STATEMODES_SQL_POOLER = "transaction"
    assert "django_statemodes.W030" in ids()  # waiters re-check without a LISTEN alias
    sql.STATEMODES_SQL_LISTEN_DATABASE = "statesqlite"
    found = ids()
    assert "django_statemodes.E035" in found and "django_statemodes.W030" not in found
    sql.STATEMODES_SQL_LISTEN_DATABASE = "nowhere"
    assert "django_statemodes.E035" in ids()


def test_a_read_only_alias_is_warned_about(sql: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "django_statemodes.W031" not in ids()
    options = {"options": "-c default_transaction_read_only=on"}
    monkeypatch.setitem(connections["statesqlite"].settings_dict, "OPTIONS", options)
    assert "django_statemodes.W031" in ids()


class SessionTablesElsewhere:
    """A router that allows the session-state tables only in the ``pg`` database."""

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return db == "pg" if app_label == "django_statemodes" else None


def test_routers_that_keep_the_tables_out_of_the_alias_are_warned_about(sql: Any) -> None:
    assert "django_statemodes.W032" not in ids()
    sql.DATABASE_ROUTERS = [f"{__name__}.SessionTablesElsewhere"]
    assert "django_statemodes.W032" in ids()
    sql.STATEMODES_SQL_DATABASE = "pg"
    assert "django_statemodes.W032" not in ids()
