"""SQL mode's index of sessions by user: schema version 2, upgraded in place by installsqlstate."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections

from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.providers.sql import SQLStateProvider, ddl, index, provider_for, schema
from django_statemodes.testing import new_key
from tests.fixtures_sql import ALIASES, MakeProvider

pytestmark = pytest.mark.django_db(databases=["default", *ALIASES], transaction=True)


def run(command: str, **options: Any) -> str:
    out = StringIO()
    call_command(command, stdout=out, stderr=out, **options)
    return out.getvalue()


def downgrade(alias: str) -> None:
    """Turn the installed sessions table into schema version 1 (ASP.NET's columns only)."""
    connection = connections[alias]
    q = connection.ops.quote_name
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            cursor.execute(f"DROP INDEX {q(index.INDEX_USER_ID)} ON {q(schema.SESSIONS)}")
        else:
            cursor.execute(f"DROP INDEX {q(index.INDEX_USER_ID)}")
        for column in index.COLUMNS:
            cursor.execute(f"ALTER TABLE {q(schema.SESSIONS)} DROP COLUMN {q(column)}")


def execute(provider: SQLStateProvider, sql: str, *params: Any) -> None:
    provider.run(lambda conn: provider._execute(conn, sql, params))


@pytest.fixture(params=ALIASES)
def version_one(request: Any, sql_tables: list[str]) -> Any:
    """An alias whose sessions table is of schema version 1; version 2 again afterwards."""
    alias = request.param
    run("uninstallsqlstate", database=alias, interactive=False)
    run("installsqlstate", database=alias, type="persisted")
    downgrade(alias)
    yield alias
    run("uninstallsqlstate", database=alias, interactive=False)
    run("installsqlstate", database=alias, type="persisted")


def test_a_new_install_is_of_the_current_version(sql_tables: list[str]) -> None:
    for alias in sql_tables:
        assert index.installed_version(connections[alias]) == index.SCHEMA_VERSION == 2
        assert ddl.upgrade_statements(connections[alias]) == []


def test_dry_run_shows_the_upgrade_and_changes_nothing(version_one: str) -> None:
    connection = connections[version_one]
    q = connection.ops.quote_name
    output = run("installsqlstate", database=version_one, dry_run=True)
    lines = [line for line in output.splitlines() if line.endswith(";")]
    assert len(lines) == 5
    for column in index.COLUMNS:
        assert any(f"ADD COLUMN {q(column)}" in line for line in lines), column
    assert f"CREATE INDEX {q(index.INDEX_USER_ID)}" in lines[-1]
    assert index.installed_version(connection) == 1


def test_installsqlstate_upgrades_in_place_and_keeps_the_sessions(version_one: str) -> None:
    provider = provider_for(version_one)
    key = new_key()
    try:
        # A version-1 table serves sessions as before; the index asks for the upgrade.
        assert provider.set_and_release(key, b"\x00kept", lock_id=None, timeout=60, new_item=True)
        with pytest.raises(SessionStoreUnavailable, match="installsqlstate"):
            provider.bind_user(key, "7", ip=None, user_agent=None)
        output = run("installsqlstate", database=version_one)
        assert "Upgraded table" in output and "version 2" in output
        assert index.installed_version(connections[version_one]) == 2
        item = provider.get(key)
        assert item is not None and item.data == b"\x00kept"
        assert provider.bind_user(key, "7", ip="192.0.2.0", user_agent="UA")
        assert [info.session_key for info in provider.user_sessions("7")] == [key]
        assert run("installsqlstate", database=version_one, dry_run=True).count("ALTER") == 0
    finally:
        provider.remove(key)
        provider.close()


def test_a_binding_left_on_a_replaced_expired_row_is_not_the_new_sessions(
    sql_tables: list[str], make_provider: MakeProvider
) -> None:
    # An expired row is replaced in place when its key comes back (create_uninitialized); the
    # old owner's columns stay, but the new row's Created is later than their LastSeen.
    for alias in sql_tables:
        provider = make_provider(alias)
        key, user = new_key(), new_key()
        q = connections[alias].ops.quote_name
        try:
            assert provider.create_uninitialized(key, 60)
            assert provider.bind_user(key, user, ip=None, user_agent=None)
            # An hour back: the old owner's binding lies in an earlier clock tick than the
            # replacement's Created, as it does when a row expires (SQLite's clock counts
            # milliseconds, and the whole test may run within one).
            earlier = {
                "postgresql": f"{q('Created')} - interval '1 hour'",
                "mysql": f"{q('Created')} - INTERVAL 1 HOUR",
                "sqlite": f"strftime('%Y-%m-%d %H:%M:%f', {q('Created')}, '-1 hour')",
            }[connections[alias].vendor]
            expire = (
                f"UPDATE {q(schema.SESSIONS)} SET {q('Expires')} = {earlier}, "
                f"{q('LastSeen')} = {earlier}, {q('Created')} = {earlier} "
                f"WHERE {q('SessionId')} = {provider.placeholder}"
            )
            execute(provider, expire, provider.sid(key))
            assert provider.user_sessions(user) == []
            assert provider.create_uninitialized(key, 60)
            assert provider.user_sessions(user) == []
            page, _ = provider.list_sessions(limit=1000)
            assert all(info.user_id == "" for info in page if info.session_key == key)
            provider.touch_user(key, ip="192.0.2.0", user_agent=None)
            assert provider.user_sessions(user) == []
        finally:
            provider.remove(key)
