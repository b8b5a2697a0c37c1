"""SQL mode on PostgreSQL through a real PgBouncer in transaction pooling (Debian's 1.18).

What transaction pooling breaks, and what the provider does instead: no named prepared
statements (another client's statement would be bound with our parameters), LISTEN on a direct
alias of its own (a LISTEN through the pooler is heard by whichever client holds the server
connection next, if any), and no session-level ``SET`` (it would stay on the server connection
for the next client): the purge uses ``SET LOCAL`` inside each batch's transaction.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connections

from django_statemodes.providers.sql.postgresql import PostgresStateProvider
from django_statemodes.testing import new_key
from tests.fixtures_sql import PG, PG_ENABLED, MakeProvider, close_providers, database_name
from tests.pgbouncer import pgbouncer
from tests.server import get, gunicorn, hammer

pytestmark = [
    pytest.mark.skipif(not PG_ENABLED, reason="PostgreSQL is not reachable"),
    pytest.mark.django_db(databases=["default", PG]),
]

POOLED = "pgbouncer"  # an alias to the test database through PgBouncer, added per test


@pytest.fixture
def bouncer(sql_tables: list[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A PgBouncer with one server connection: every client shares it, so any leak shows."""
    with pgbouncer(pool_size=1) as port:
        pooled = {**connections.settings[PG], "NAME": database_name(PG), "PORT": str(port)}
        monkeypatch.setitem(connections.settings, POOLED, pooled)
        yield port
        close_providers()
        if POOLED in connections:
            connections[POOLED].close()
            del connections[POOLED]


def client(port: int) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1", port=port, user="root", dbname=database_name(PG), autocommit=True,
        prepare_threshold=None,
    )  # fmt: skip


def synchronous_commit(port: int) -> str:
    with client(port) as conn:
        row = conn.execute("SHOW synchronous_commit").fetchone()
    assert row is not None
    return str(row[0])


def test_a_session_level_set_would_leak_through_the_pooler(bouncer: int) -> None:
    # The control case: the harness sees a leak when there is one.
    with client(bouncer) as conn:
        conn.execute("SET synchronous_commit TO off")
        assert synchronous_commit(bouncer) == "off"  # another client got it
        conn.execute("RESET synchronous_commit")
    assert synchronous_commit(bouncer) == "on"


def test_the_purge_setting_stays_in_its_transactions(
    bouncer: int, settings: Any, make_provider: MakeProvider
) -> None:
    settings.STATEMODES_SQL_POOLER = "transaction"
    provider = make_provider(POOLED)
    for _ in range(5):
        assert provider.set_and_release(
            new_key(), b"\x00{}", lock_id=None, timeout=0, new_item=True
        )
    seen: list[str] = []
    # Between batches, another client of the same server connection looks at the setting.
    removed = provider.purge_expired(
        batch_size=2, on_batch=lambda done: seen.append(synchronous_commit(bouncer))
    )
    assert removed >= 5
    assert seen and set(seen) == {"on"}, seen
    assert synchronous_commit(bouncer) == "on"


def test_no_prepared_statement_crosses_clients(
    bouncer: int, settings: Any, make_provider: MakeProvider
) -> None:
    settings.STATEMODES_SQL_POOLER = "transaction"
    first, second = make_provider(POOLED), make_provider(POOLED)
    keys = [new_key() for _ in range(10)]
    for key in keys:  # each statement many times, from two clients, on one server connection
        assert first.set_and_release(key, b"\x00a", lock_id=None, timeout=60, new_item=True)
        held = second.get_exclusive(key)
        assert held is not None and not held.locked and held.data == b"\x00a"
        assert second.set_and_release(key, b"\x00b", lock_id=held.lock_id, timeout=60)
        item = first.get(key)
        assert item is not None and item.data == b"\x00b"
    with client(bouncer) as conn:
        row = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert row == (0,)


def wait_across_providers(holder: PostgresStateProvider, waiter: PostgresStateProvider) -> None:
    key = new_key()
    assert holder.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    held = holder.get_exclusive(key)
    assert held is not None and not held.locked
    started = threading.Event()
    done = threading.Event()

    def wait() -> None:
        started.set()
        waiter.wait_for_release(key, held.lock_id, timeout=60)
        done.set()

    thread = threading.Thread(target=wait)
    thread.start()
    assert started.wait(10)
    assert not done.wait(0.2)  # the lock holds: the waiter waits
    assert holder.set_and_release(key, b"\x00{}", lock_id=held.lock_id, timeout=60)
    thread.join(timeout=30)
    assert done.is_set()
    holder.remove(key)


def test_waiters_are_woken_through_a_direct_listen_alias(
    bouncer: int, settings: Any, make_provider: MakeProvider
) -> None:
    settings.STATEMODES_SQL_POOLER = "transaction"
    settings.STATEMODES_SQL_LISTEN_DATABASE = PG  # direct, past the pooler
    holder, waiter = make_provider(POOLED), make_provider(POOLED)
    assert isinstance(waiter, PostgresStateProvider) and isinstance(holder, PostgresStateProvider)
    assert waiter.listen_alias == PG
    wait_across_providers(holder, waiter)
    assert waiter.waits.woken == 1  # by the holder's NOTIFY, sent through PgBouncer
    assert waiter.waits.timed_out == 0 and waiter.waits.fallback == 0


def test_without_a_listen_alias_waiters_recheck_instead(
    bouncer: int, settings: Any, make_provider: MakeProvider
) -> None:
    settings.STATEMODES_SQL_POOLER = "transaction"
    holder, waiter = make_provider(POOLED), make_provider(POOLED)
    assert isinstance(waiter, PostgresStateProvider) and isinstance(holder, PostgresStateProvider)
    assert waiter.listen_alias is None
    wait_across_providers(holder, waiter)
    assert waiter.waits.unlocked == 1  # a re-check saw the release, well before any bound
    assert waiter.waits.woken == 0 and waiter.waits.fallback == 0
    assert waiter._listener is None  # no LISTEN was ever sent through the pooler


@pytest.mark.slow
def test_atomic_requests_through_pgbouncer_lose_no_update(sql_tables: list[str]) -> None:
    with pgbouncer(pool_size=4) as port:
        env = {
            "STATEMODES_SQLAPP_NAME": database_name(PG),
            "STATEMODES_SQLAPP_PORT": str(port),
            "STATEMODES_SQLAPP_ATOMIC": "1",
            "STATEMODES_SQLAPP_POOLER": "transaction",
            "STATEMODES_SQLAPP_LISTEN_PORT": "5432",
            "DJANGO_SETTINGS_MODULE": "tests.sqlapp.settings",
        }
        with gunicorn("tests.sqlapp.wsgi", workers=2, threads=4, env=env) as site:
            status, _, body = get(site, "/pid/")
            assert status == 200 and json.loads(body)["in_atomic"] is True
            served: set[str] = set()
            expected, actual = hammer(site, clients=8, increments=50, work_ms=2, served=served)
    assert actual == expected == 401
    assert len(served) == 2, served
