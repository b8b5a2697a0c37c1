"""installsqlstate / uninstallsqlstate, the schema, and the clear error when it is missing."""

from __future__ import annotations

from io import StringIO
from typing import Any
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from django_statemodes.exceptions import SQLStateNotInstalled
from django_statemodes.providers.sql import ddl, provider_for, schema
from tests.fixtures_sql import ALIASES, PG, PG_ENABLED, SQLITE

pytestmark = pytest.mark.django_db(databases=["default", *ALIASES], transaction=True)

needs_pg = pytest.mark.skipif(not PG_ENABLED, reason="PostgreSQL is not reachable")


def run(command: str, **options: Any) -> str:
    out = StringIO()
    call_command(command, stdout=out, stderr=out, **options)
    return out.getvalue()


@pytest.fixture
def clean(request: Any) -> Any:
    """Start each test with no tables in the alias; leave them installed afterwards."""
    alias = request.param

    def reinstall() -> None:
        run("uninstallsqlstate", database=alias, interactive=False)
        run("installsqlstate", database=alias, type="persisted")

    run("uninstallsqlstate", database=alias, interactive=False)
    yield alias
    reinstall()


def relpersistence(table: str) -> str:
    with connections[PG].cursor() as cursor:
        cursor.execute("SELECT relpersistence FROM pg_class WHERE relname = %s", [table])
        return str(cursor.fetchone()[0])


@needs_pg
@pytest.mark.parametrize("clean", [PG], indirect=True)
def test_temp_creates_unlogged_tables_on_postgresql(clean: str) -> None:
    output = run("installsqlstate", database=PG, type="temp")
    assert "UNLOGGED" in output
    assert relpersistence(schema.SESSIONS) == "u"
    assert relpersistence(schema.APPLICATIONS) == "u"


@needs_pg
@pytest.mark.parametrize("clean", [PG], indirect=True)
def test_persisted_creates_ordinary_tables_and_the_expires_index(clean: str) -> None:
    run("installsqlstate", database=PG, type="persisted")
    assert relpersistence(schema.SESSIONS) == "p"
    with connections[PG].cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = %s", [schema.INDEX_EXPIRES]
        )
        assert '("Expires")' in cursor.fetchone()[0]
        cursor.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
            [schema.SESSIONS],
        )
        columns = {row[0] for row in cursor.fetchall()}
        cursor.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = %s",
            [schema.APPLICATIONS],
        )
        applications = {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
    assert columns == SESSION_COLUMNS
    assert applications == {
        "AppId": ("integer", "NO"),
        "AppName": ("character varying", "NO"),
    }
    assert primary_key(schema.APPLICATIONS) == ["AppId"]


# ASP.NET's ASPStateTempSessions, column for column, and schema version 2's index of sessions
# by user (docs/sessions-by-user.md).
SESSION_COLUMNS = {
    "SessionId", "Created", "Expires", "LockDate", "LockDateLocal", "LockCookie",
    "Timeout", "Locked", "SessionItemShort", "SessionItemLong", "Flags",
    "UserId", "IpAddress", "UserAgent", "LastSeen",
}  # fmt: skip


def primary_key(table: str) -> list[str]:
    with connections[PG].cursor() as cursor:
        cursor.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = %s::regclass AND i.indisprimary",
            [f'"{table}"'],
        )
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.parametrize("clean", [SQLITE], indirect=True)
def test_the_sqlite_schema_has_both_tables_and_the_expires_index(clean: str) -> None:
    run("installsqlstate", database=SQLITE)
    with connections[SQLITE].cursor() as cursor:

        def table_info(table: str) -> dict[str, tuple[str, bool, bool]]:
            # PRAGMA table_info: (cid, name, type, notnull, default, pk)
            cursor.execute(f'PRAGMA table_info("{table}")')
            return {row[1]: (row[2].lower(), bool(row[3]), bool(row[5])) for row in cursor}

        sessions = table_info(schema.SESSIONS)
        applications = table_info(schema.APPLICATIONS)
        cursor.execute(f'PRAGMA index_info("{schema.INDEX_EXPIRES}")')
        expires_index = [row[2] for row in cursor.fetchall()]
        cursor.execute(f'PRAGMA index_list("{schema.SESSIONS}")')
        indexes = {row[1] for row in cursor.fetchall()}
    assert set(sessions) == SESSION_COLUMNS
    assert sessions["SessionId"][2] is True  # the primary key, as in ASP.NET
    assert sessions["SessionItemShort"][1] is False and sessions["SessionItemLong"][1] is False
    assert sessions["Expires"][1] is True and sessions["LockCookie"][1] is True
    assert applications == {
        "AppId": ("integer", True, True),
        "AppName": ("varchar(280)", True, False),
    }
    assert schema.INDEX_EXPIRES in indexes
    assert expires_index == ["Expires"]


@pytest.mark.parametrize("clean", ALIASES, indirect=True)
def test_dry_run_prints_the_sql_and_changes_nothing(clean: str) -> None:
    output = run("installsqlstate", database=clean, dry_run=True)
    quote = connections[clean].ops.quote_name
    assert f"CREATE INDEX {quote(schema.INDEX_EXPIRES)}" in output
    assert quote(schema.SESSIONS) in output and quote(schema.APPLICATIONS) in output
    assert ddl.existing_tables(connections[clean]) == set()


@pytest.mark.parametrize("clean", ALIASES, indirect=True)
def test_install_is_idempotent_with_clear_messages(clean: str) -> None:
    first = run("installsqlstate", database=clean)
    assert "Created" in first
    second = run("installsqlstate", database=clean)
    assert "Created" not in second
    assert f"Session-state table '{schema.SESSIONS}' already exists." in second
    assert ddl.existing_tables(connections[clean]) == set(schema.TABLES)


@pytest.mark.parametrize("clean", [SQLITE], indirect=True)
def test_temp_on_sqlite_says_it_makes_ordinary_tables(clean: str) -> None:
    output = run("installsqlstate", database=SQLITE, type="temp")
    assert "SQLite has no unlogged tables" in output
    assert "UNLOGGED" not in output


@needs_pg
def test_asking_for_another_type_of_existing_tables_names_the_fix() -> None:
    output = run("installsqlstate", database=PG, type="temp")  # installed persisted
    assert "uninstallsqlstate" in output
    assert relpersistence(schema.SESSIONS) == "p"


@pytest.mark.parametrize("alias", ALIASES)
def test_install_registers_the_application_row(alias: str, settings: Any) -> None:
    settings.STATEMODES_APPLICATION_NAME = "Shop"
    run("installsqlstate", database=alias)
    with connections[alias].cursor() as cursor:
        cursor.execute(
            schema.application_name_statement(connections[alias]), [schema.app_id("shop")]
        )
        assert cursor.fetchone()[0].rstrip() == "Shop"


def test_app_id_is_aspnets_hash_of_the_lowercased_name() -> None:
    # ASP.NET's GetHashCode procedure: hash = 5381; hash = ((hash << 5) + hash) ^ char.
    expected = 5381
    for char in "/lm/w3svc/1/root/app":
        expected = ((expected * 33) ^ ord(char)) % 2**32
    assert schema.app_id("/LM/W3SVC/1/ROOT/app") & 0xFFFFFFFF == expected
    assert -(2**31) <= schema.app_id("x" * 280) < 2**31
    assert schema.app_suffix(-1) == "ffffffff"
    assert len(schema.app_suffix(schema.app_id("default"))) == 8


@pytest.mark.parametrize("clean", ALIASES, indirect=True)
def test_uninstall_asks_for_confirmation_and_stops_on_no(clean: str) -> None:
    run("installsqlstate", database=clean)
    with mock.patch("builtins.input", return_value="no"), pytest.raises(CommandError):
        run("uninstallsqlstate", database=clean)
    assert ddl.existing_tables(connections[clean]) == set(schema.TABLES)
    with mock.patch("builtins.input", return_value="yes"):
        output = run("uninstallsqlstate", database=clean)
    assert "Dropped" in output
    assert ddl.existing_tables(connections[clean]) == set()
    assert "nothing to do" in run("uninstallsqlstate", database=clean, interactive=False)


@pytest.mark.parametrize("clean", ALIASES, indirect=True)
def test_uninstall_dry_run_changes_nothing(clean: str) -> None:
    run("installsqlstate", database=clean)
    output = run("uninstallsqlstate", database=clean, dry_run=True)
    assert f"DROP TABLE {connections[clean].ops.quote_name(schema.SESSIONS)}" in output
    assert ddl.existing_tables(connections[clean]) == set(schema.TABLES)


@pytest.mark.parametrize("clean", ALIASES, indirect=True)
def test_a_missing_schema_names_the_command_to_run(clean: str) -> None:
    provider = provider_for(clean)
    try:
        with pytest.raises(SQLStateNotInstalled, match="manage.py installsqlstate") as info:
            provider.get_exclusive("k" * 32)
        assert info.value.setting == "STATEMODES_SQL_DATABASE"
    finally:
        provider.close()


@pytest.mark.parametrize("clean", ALIASES, indirect=True)
def test_tables_dropped_under_a_running_provider_give_the_same_error(clean: str) -> None:
    run("installsqlstate", database=clean)
    provider = provider_for(clean)
    try:
        assert provider.set_and_release(
            "k" * 32, b"\x00{}", lock_id=None, timeout=60, new_item=True
        )
        run("uninstallsqlstate", database=clean, interactive=False)
        with pytest.raises(SQLStateNotInstalled, match="installsqlstate"):
            provider.get("k" * 32)
    finally:
        provider.close()


def test_an_unknown_alias_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="not in DATABASES"):
        run("installsqlstate", database="nope")


class NoSessionTables:
    """A database router that keeps the session-state tables out of every database."""

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return False if app_label == "django_statemodes" else None


@pytest.mark.parametrize("clean", [SQLITE], indirect=True)
def test_installsqlstate_honours_database_routers(clean: str, settings: Any) -> None:
    settings.DATABASE_ROUTERS = [f"{__name__}.NoSessionTables"]
    output = run("installsqlstate", database=clean)
    assert "Database routers do not allow" in output
    assert ddl.existing_tables(connections[clean]) == set()
    settings.DATABASE_ROUTERS = []
    run("installsqlstate", database=clean)
    assert ddl.existing_tables(connections[clean]) == set(schema.TABLES)


@pytest.mark.parametrize("clean", [SQLITE], indirect=True)
def test_the_test_runners_install_honours_database_routers_too(clean: str, settings: Any) -> None:
    # What post_migrate does in a test database of SQL mode's alias (apps.py).
    from django_statemodes.apps import install_in_test_database

    settings.SESSION_ENGINE = "django_statemodes.backends.sql"
    settings.STATEMODES_SQL_DATABASE = clean
    settings.DATABASE_ROUTERS = [f"{__name__}.NoSessionTables"]
    install_in_test_database(using=clean)
    assert ddl.existing_tables(connections[clean]) == set()
    settings.DATABASE_ROUTERS = []
    install_in_test_database(using=clean)
    assert ddl.existing_tables(connections[clean]) == set(schema.TABLES)


class SessionTablesOn:
    """A database router that sends the session-state models' writes to one alias."""

    alias = SQLITE

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return self.alias if model._meta.app_label == "django_statemodes" else None


@pytest.mark.parametrize("clean", [SQLITE], indirect=True)
def test_without_the_setting_the_routers_choose_the_sessions_database(
    clean: str, settings: Any
) -> None:
    from django_statemodes.backends.sql import SessionStore
    from django_statemodes.conf import conf

    del settings.STATEMODES_SQL_DATABASE
    settings.SESSION_ENGINE = "django_statemodes.backends.sql"
    assert conf.STATEMODES_SQL_DATABASE == "default"  # no router: Django's default alias
    settings.DATABASE_ROUTERS = [f"{__name__}.SessionTablesOn"]
    routed = conf.STATEMODES_SQL_DATABASE
    assert routed == clean
    run("installsqlstate")  # the command follows: the routed alias
    assert ddl.existing_tables(connections[clean]) == set(schema.TABLES)
    store = SessionStore()
    store["cart"] = 3
    store.save()
    with connections[clean].cursor() as cursor:
        cursor.execute('SELECT count(*) FROM "ASPStateTempSessions"')
        assert cursor.fetchone()[0] == 1  # the session is in the routed database
    assert SessionStore(store.session_key).load() == {"cart": 3}
