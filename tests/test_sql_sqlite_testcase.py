"""SQL mode on the test runner's in-memory SQLite database: sessions join a TestCase's transaction.

This suite's ``default`` alias is that database under pytest-django
(``file:memorydb_default?mode=memory&cache=shared``); the state tables are installed in it for
this module only. A ``TestCase`` (a ``django_db`` test without ``transaction=True``) holds
SQLite's only write lock once it writes through the ORM, so every test here writes a user first:
the provider must then work in that transaction, and its sessions roll back with it. SQL mode's
other tests use a file test database (``statesqlite``), where the provider keeps its own
connections.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.core import mail
from django.core.management import call_command
from django.db import connections, transaction

from django_statemodes.backends.sql import SessionStore
from django_statemodes.exceptions import SessionStoreUnavailable, SQLStateNotInstalled
from django_statemodes.providers.sql import provider_for
from django_statemodes.providers.sql.sqlite import SQLiteStateProvider, SQLiteTestDatabaseProvider
from django_statemodes.test import clear_sessions, is_runner_memory_database
from django_statemodes.testing import ProviderContract, new_key
from tests.fixtures_sql import SQLITE

MEMORY = "default"


@pytest.fixture(scope="module")
def memory_tables(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Install the state tables in the in-memory test database, for this module only."""
    with django_db_blocker.unblock():
        assert is_runner_memory_database(connections[MEMORY].settings_dict["NAME"])
        call_command("installsqlstate", database=MEMORY, type="persisted", verbosity=0)
    yield
    with django_db_blocker.unblock():
        call_command("uninstallsqlstate", database=MEMORY, interactive=False, verbosity=0)


@pytest.fixture
def provider(memory_tables: None) -> Iterator[SQLiteStateProvider]:
    built = provider_for(MEMORY)
    assert isinstance(built, SQLiteStateProvider)
    yield built
    built.close()


def write_a_user() -> None:
    """Write through the ORM: in a TestCase, the test's transaction now holds the write lock."""
    User.objects.create(username=new_key()[:30])


def other_connection_is_locked_out() -> bool:
    """Return True if a connection of its own cannot write the database (the test's lock)."""
    conn = sqlite3.connect(connections[MEMORY].settings_dict["NAME"], uri=True, timeout=0)
    try:
        conn.execute('DELETE FROM "ASPStateTempSessions" WHERE 0')
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc)
    finally:
        conn.close()
    return False


# Which provider is built.


def test_the_in_memory_test_database_gets_the_test_database_provider(
    provider: SQLiteStateProvider,
) -> None:
    assert type(provider) is SQLiteTestDatabaseProvider


@pytest.mark.django_db(databases=[MEMORY, SQLITE])
def test_a_file_test_database_keeps_the_providers_own_connections(
    sql_tables: list[str],
) -> None:
    # Other processes (a server under test) may open a file; this suite's SQL tests rely on it.
    built = provider_for(SQLITE)
    assert type(built) is SQLiteStateProvider
    built.close()


def test_outside_a_test_environment_the_provider_is_the_production_one(
    memory_tables: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(mail, "outbox")  # as after teardown_test_environment()
    built = provider_for(MEMORY)
    assert type(built) is SQLiteStateProvider
    built.close()


# Inside a TestCase: the conformance kit, after an ORM write, in the test's transaction.


@pytest.mark.django_db(databases=[MEMORY])
class TestInTheTestTransaction(ProviderContract):
    @pytest.fixture
    def provider(self, memory_tables: None) -> Iterator[SQLiteStateProvider]:
        write_a_user()
        assert other_connection_is_locked_out()  # the lock the pool's connections would meet
        built = provider_for(MEMORY)
        assert isinstance(built, SQLiteStateProvider)
        yield built
        built.close()

    def test_a_waiter_is_woken_by_the_release(self, provider: Any, key: str) -> None:
        pytest.skip(
            "another thread cannot see the test's transaction (Django's db engine neither); "
            "covered outside it by TestOutsideTheTestTransaction"
        )

    def test_async_twins_follow_the_same_contract(self, provider: Any, key: str) -> None:
        pytest.skip(
            "asyncio.run() calls back into another thread than the test's; "
            "test_async_calls_run_in_the_tests_transaction uses async_to_sync, as Django does"
        )


@pytest.mark.django_db(databases=[MEMORY], transaction=True)
class TestOutsideTheTestTransaction(ProviderContract):
    # TransactionTestCase: no transaction around the test, the pool serves as in production.
    @pytest.fixture
    def provider(self, memory_tables: None) -> Iterator[SQLiteStateProvider]:
        built = provider_for(MEMORY)
        assert isinstance(built, SQLiteStateProvider)
        yield built
        built.close()


@pytest.mark.django_db(databases=[MEMORY])
def test_the_session_is_in_the_tests_transaction(provider: SQLiteStateProvider) -> None:
    write_a_user()
    key = new_key()
    assert provider.set_and_release(key, b"cart", lock_id=None, timeout=60, new_item=True)
    held = provider.get_exclusive(key)
    assert held is not None and not held.locked and held.data == b"cart"
    # Django's connection sees the lock: the same transaction; the pool opened no connection.
    with connections[MEMORY].cursor() as cursor:
        cursor.execute(
            'SELECT "Locked" FROM "ASPStateTempSessions" WHERE "SessionId" = %s',
            [provider.sid(key)],
        )
        assert cursor.fetchone() == (1,)
    assert provider.pool().stats.opened == 0
    assert provider.set_and_release(key, b"paid", lock_id=held.lock_id, timeout=60)
    item = provider.get(key)
    assert item is not None and item.data == b"paid" and not item.locked


@pytest.mark.django_db(databases=[MEMORY])
def test_async_calls_run_in_the_tests_transaction(provider: SQLiteStateProvider) -> None:
    write_a_user()
    key = new_key()

    async def scenario() -> bytes | None:
        assert await provider.aset_and_release(
            key, b"cart", lock_id=None, timeout=60, new_item=True
        )
        held = await provider.aget_exclusive(key)
        assert held is not None and not held.locked
        busy = await provider.aget_exclusive(key)
        assert busy is not None and busy.locked
        await provider.await_for_release(key, held.lock_id, 0.05)  # still held: returns
        assert await provider.aset_and_release(key, b"paid", lock_id=held.lock_id, timeout=60)
        item = await provider.aget(key)
        assert item is not None and not item.locked
        data: bytes | None = item.data
        return data

    # Django's test client and async TestCase methods run async code this way: thread-sensitive
    # calls come back to this thread, which owns the test's connection.
    assert async_to_sync(scenario)() == b"paid"
    assert provider.get(key) is not None  # the same transaction, seen from the sync side


@pytest.mark.django_db(databases=[MEMORY])
def test_a_failed_statement_leaves_the_tests_transaction_usable(
    provider: SQLiteStateProvider,
) -> None:
    write_a_user()
    with pytest.raises(SQLStateNotInstalled):
        provider.run(lambda conn: conn.execute('SELECT 1 FROM "no_such_table"'))
    write_a_user()  # rolled back to the savepoint only: the test goes on
    assert User.objects.count() == 2


@pytest.mark.django_db(databases=[MEMORY], transaction=True)
def test_the_sessions_roll_back_with_the_transaction(provider: SQLiteStateProvider) -> None:
    kept, undone = new_key(), new_key()
    assert provider.set_and_release(kept, b"a", lock_id=None, timeout=60, new_item=True)
    with transaction.atomic(using=MEMORY):  # what TestCase opens around each test
        write_a_user()
        assert provider.set_and_release(undone, b"b", lock_id=None, timeout=60, new_item=True)
        assert provider.get(undone) is not None
        transaction.set_rollback(True, using=MEMORY)
    assert provider.get(undone) is None
    assert provider.get(kept) is not None  # committed by the pool, outside any transaction
    provider.remove(kept)


@pytest.mark.django_db(databases=[MEMORY])
def test_clear_sessions_works_in_the_tests_transaction(memory_tables: None, settings: Any) -> None:
    settings.SESSION_ENGINE = "django_statemodes.backends.sql"
    settings.STATEMODES_SQL_DATABASE = MEMORY
    write_a_user()
    for _ in range(3):
        session = SessionStore()
        session["cart"] = ["apple"]
        session.save()
    assert clear_sessions() == 3
    assert clear_sessions() == 0


@pytest.mark.django_db(databases=[MEMORY, SQLITE])
def test_on_a_file_test_database_clear_sessions_names_the_lock(
    sql_tables: list[str], settings: Any
) -> None:
    # The remaining limit (docs/testing.md): a file keeps the providers' own connections, which
    # a TestCase's write locks out; clear_sessions() says why and what to do.
    settings.SESSION_ENGINE = "django_statemodes.backends.sql"
    settings.STATEMODES_SQL_DATABASE = SQLITE
    with connections[SQLITE].cursor() as cursor:  # the test's transaction takes the write lock
        cursor.execute('DELETE FROM "ASPStateTempSessions" WHERE 0')
    with pytest.raises(SessionStoreUnavailable, match="TransactionTestCase"):
        clear_sessions()


@pytest.mark.django_db(databases=[MEMORY], transaction=True)
def test_a_table_lock_of_another_connection_is_waited_for(provider: SQLiteStateProvider) -> None:
    # A shared-cache database answers "database table is locked" at once while another
    # connection of the process writes (SQLite's busy timeout does not cover it): the call
    # waits for that write to end, as the busy timeout would, instead of failing.
    key = new_key()
    assert provider.set_and_release(key, b"cart", lock_id=None, timeout=60, new_item=True)
    opened = provider.pool().stats.opened
    writer = sqlite3.connect(connections[MEMORY].settings_dict["NAME"], uri=True, timeout=0)
    writer.isolation_level = None
    outcome: list[Any] = []
    done = threading.Event()

    def lock() -> None:
        try:
            outcome.append(provider.get_exclusive(key))
        except Exception as exc:  # the failure this test guards against
            outcome.append(exc)
        done.set()

    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute('UPDATE "ASPStateTempSessions" SET "Timeout" = "Timeout" WHERE 0 = 1')
        caller = threading.Thread(target=lock, daemon=True)
        caller.start()
        # Ordering, not timing: the call has been refused by the table lock at least once
        # while the writer holds it (the writer's own statement shows the lock is real).
        assert other_connection_is_locked_out()
        assert not done.wait(0.3), outcome  # still waiting, not failed
        writer.execute("COMMIT")
        assert done.wait(60), "the call did not end once the writer committed"
    finally:
        writer.close()
    caller.join(60)
    assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
    held = outcome[0]
    assert held is not None and not held.locked and held.data == b"cart"
    provider.release(key, held.lock_id)
    # Each refusal rolled back and tried again on the same connection: a table lock says
    # nothing against it, so neither it nor the pool's idle ones were closed and reopened.
    assert provider.pool().stats.opened == opened
