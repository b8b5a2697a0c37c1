"""SQL mode on PostgreSQL through a real PgBouncer in transaction pooling: Debian's 1.18, and
1.24.1 (built by scripts/test.sh) with prepared statements tracked per client.

What transaction pooling breaks, and what the provider does instead: no named prepared
statements (another client's statement would be bound with our parameters), LISTEN on a direct
alias of its own (a LISTEN through the pooler is heard by whichever client holds the server
connection next, if any), and no session-level ``SET`` (it would stay on the server connection
for the next client): the purge uses ``SET LOCAL`` inside each batch's transaction.

PgBouncer 1.21+ with ``max_prepared_statements`` > 0 renames each client's prepared statements
on the server connections, so the alias's OPTIONS may name a ``prepare_threshold`` again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from django.db import connections

from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.providers.sql.base import SQLStateProvider
from django_statemodes.providers.sql.postgresql import PostgresStateProvider
from django_statemodes.testing import new_key
from tests.fixtures_sql import PG, PG_ENABLED, MakeProvider, close_providers, database_name
from tests.pgbouncer import BUILT, pgbouncer, stats
from tests.server import get, gunicorn, hammer
from tests.test_sql_server import app_env, install_on, private_cluster, restart_under_load

pytestmark = [
    pytest.mark.skipif(not PG_ENABLED, reason="PostgreSQL is not reachable"),
    pytest.mark.django_db(databases=["default", PG]),
]

POOLED = "pgbouncer"  # an alias to the test database through PgBouncer, added per test


@contextmanager
def pooled_alias(
    monkeypatch: pytest.MonkeyPatch, port: int, options: dict[str, Any] | None = None
) -> Iterator[None]:
    """The POOLED alias, through the PgBouncer on ``port``, with more OPTIONS."""
    pooled = {**connections.settings[PG], "NAME": database_name(PG), "PORT": str(port)}
    if options is not None:
        pooled["OPTIONS"] = {**pooled.get("OPTIONS", {}), **options}
    monkeypatch.setitem(connections.settings, POOLED, pooled)
    try:
        yield
    finally:
        close_providers()
        if POOLED in connections:
            connections[POOLED].close()
            del connections[POOLED]


# PgBouncers with one server connection: every client shares it, so any leak shows.


@pytest.fixture
def bouncer(sql_tables: list[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Debian's PgBouncer (1.18): no prepared statements through it."""
    with pgbouncer(pool_size=1) as port, pooled_alias(monkeypatch, port):
        yield port


@pytest.fixture(params=[0, 1], ids=["threshold0", "threshold1"])
def tracking_bouncer(
    request: pytest.FixtureRequest, sql_tables: list[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[int]:
    """PgBouncer 1.24 tracking prepared statements, the alias naming a prepare_threshold."""
    options = {"prepare_threshold": request.param}
    with (
        pgbouncer(pool_size=1, binary=BUILT, max_prepared_statements=100) as port,
        pooled_alias(monkeypatch, port, options),
    ):
        yield port


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


def server_prepared(port: int) -> int:
    """How many statements are prepared on the server connection behind PgBouncer."""
    with client(port) as conn:
        row = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert row is not None
    return int(row[0])


def exchange(first: SQLStateProvider, second: SQLStateProvider, *, rounds: int) -> None:
    """Each statement many times, from two clients, on one server connection, in an order
    where the two clients' n-th prepared statements differ (psycopg names them _pg3_<n>)."""
    for _ in range(rounds):
        key = new_key()
        assert first.set_and_release(key, b"\x00a", lock_id=None, timeout=60, new_item=True)
        held = second.get_exclusive(key)
        assert held is not None and not held.locked and held.data == b"\x00a"
        assert second.set_and_release(key, b"\x00b", lock_id=held.lock_id, timeout=60)
        item = first.get(key)
        assert item is not None and item.data == b"\x00b"


def test_no_prepared_statement_crosses_clients(
    bouncer: int, settings: Any, make_provider: MakeProvider
) -> None:
    settings.STATEMODES_SQL_POOLER = "transaction"
    exchange(make_provider(POOLED), make_provider(POOLED), rounds=10)
    assert server_prepared(bouncer) == 0


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


def increments_through(port: int, **extra: str) -> tuple[int, int, set[str]]:
    """8 x 50 increments through gunicorn (2 workers, ATOMIC_REQUESTS) via the pooler at port.

    Returns (expected, actual) final counters and the worker pids that served them.
    """
    env = {
        "STATEMODES_SQLAPP_NAME": database_name(PG),
        "STATEMODES_SQLAPP_PORT": str(port),
        "STATEMODES_SQLAPP_ATOMIC": "1",
        "STATEMODES_SQLAPP_POOLER": "transaction",
        "STATEMODES_SQLAPP_LISTEN_PORT": "5432",
        "DJANGO_SETTINGS_MODULE": "tests.sqlapp.settings",
        **extra,
    }
    with gunicorn("tests.sqlapp.wsgi", workers=2, threads=4, env=env) as site:
        status, _, body = get(site, "/pid/")
        assert status == 200 and json.loads(body)["in_atomic"] is True
        served: set[str] = set()
        expected, actual = hammer(site, clients=8, increments=50, work_ms=2, served=served)
    return expected, actual, served


@pytest.mark.slow
def test_atomic_requests_through_pgbouncer_lose_no_update(sql_tables: list[str]) -> None:
    with pgbouncer(pool_size=4) as port:
        expected, actual, served = increments_through(port)
    assert actual == expected == 401
    assert len(served) == 2, served


@pytest.mark.slow
def test_atomic_requests_through_pgbouncer_1_24_with_prepared_statements_lose_no_update(
    sql_tables: list[str],
) -> None:
    with pgbouncer(pool_size=4, binary=BUILT, max_prepared_statements=100) as port:
        expected, actual, served = increments_through(port, STATEMODES_SQLAPP_PREPARE_THRESHOLD="1")
        totals = stats(port, database_name(PG))
    assert actual == expected == 401
    assert len(served) == 2, served
    # The 400 increments lock and save (two statements or more each) through statements
    # prepared once per connection: many more binds than parses.
    assert totals["total_bind_count"] >= 2 * 400
    assert 0 < totals["total_client_parse_count"] * 4 < totals["total_bind_count"], totals


@pytest.mark.slow
def test_a_database_restart_behind_pgbouncer_gives_503s_loses_nothing_and_recovers(
    sql_tables: list[str],
) -> None:
    # PgBouncer keeps the clients' connections while PostgreSQL restarts: a query waits for a
    # server connection up to query_wait_timeout, then fails, and PgBouncer tries the server
    # again every server_login_retry. With the settings docs/sql.md recommends, the site
    # answers 503s while the database is down and recovers once it is back, the same workers.
    with private_cluster() as (pg_port, stop, start):
        direct = app_env(
            "postgres", STATEMODES_SQLAPP_USER="postgres", STATEMODES_SQLAPP_PORT=str(pg_port)
        )
        install_on(direct)
        with pgbouncer(
            pool_size=4, upstream=pg_port, user="postgres", query_wait_timeout=2,
            server_login_retry=1,
        ) as bouncer_port:  # fmt: skip
            env = {
                **direct,
                "STATEMODES_SQLAPP_PORT": str(bouncer_port),
                "STATEMODES_SQLAPP_POOLER": "transaction",
                "STATEMODES_SQLAPP_LISTEN_PORT": str(pg_port),
                "STATEMODES_SQLAPP_LOCK_TIMEOUT": "3",
            }
            with gunicorn("tests.sqlapp.wsgi", workers=2, threads=4, env=env) as site:
                restart_under_load(site, stop, start)


def test_through_pgbouncer_1_24_the_provider_prepares_each_statement_once(
    tracking_bouncer: int, settings: Any, make_provider: MakeProvider
) -> None:
    settings.STATEMODES_SQL_POOLER = "transaction"
    provider = make_provider(POOLED)
    database = database_name(PG)

    def cycle() -> None:  # four statements: insert, lock, save and unlock, read
        key = new_key()
        assert provider.set_and_release(key, b"\x00a", lock_id=None, timeout=60, new_item=True)
        held = provider.get_exclusive(key)
        assert held is not None and not held.locked and held.data == b"\x00a"
        assert provider.set_and_release(key, b"\x00b", lock_id=held.lock_id, timeout=60)
        item = provider.get(key)
        assert item is not None and item.data == b"\x00b"

    cycle()  # prepares them
    warm = stats(tracking_bouncer, database)
    assert warm["total_client_parse_count"] >= 4
    for _ in range(20):
        cycle()
    after = stats(tracking_bouncer, database)
    # Eighty more executions, each binding a statement prepared before: none parsed again.
    assert after["total_client_parse_count"] == warm["total_client_parse_count"]
    assert after["total_bind_count"] - warm["total_bind_count"] >= 20 * 4
    # PgBouncer prepared them on the server connection under names of its own.
    assert server_prepared(tracking_bouncer) == after["total_server_parse_count"] > 0


def test_through_pgbouncer_1_24_prepared_statements_stay_with_their_client(
    tracking_bouncer: int, settings: Any, make_provider: MakeProvider
) -> None:
    settings.STATEMODES_SQL_POOLER = "transaction"
    exchange(make_provider(POOLED), make_provider(POOLED), rounds=10)
    totals = stats(tracking_bouncer, database_name(PG))
    # Both clients prepared each statement; the one server connection parsed each once and
    # PgBouncer bound each client's name to it: shared on the server, never across clients.
    assert totals["total_server_parse_count"] > 0
    assert totals["total_client_parse_count"] > totals["total_server_parse_count"]
    assert server_prepared(tracking_bouncer) == totals["total_server_parse_count"]


def test_a_prepare_threshold_through_pgbouncer_without_tracking_fails(
    sql_tables: list[str], monkeypatch: pytest.MonkeyPatch, settings: Any,
    make_provider: MakeProvider,
) -> None:  # fmt: skip
    # The control: PgBouncer 1.24 with max_prepared_statements = 0 passes the names through, so
    # the second client's first statement meets the first client's "_pg3_0" on the one server
    # connection: the failure docs/sql.md warns of is real. The provider answers it with a
    # 503 (SessionStoreUnavailable) that names the setting and the fix, never a bare 500.
    settings.STATEMODES_SQL_POOLER = "transaction"
    options = {"prepare_threshold": 0}
    with (
        pgbouncer(pool_size=1, binary=BUILT, max_prepared_statements=0) as port,
        pooled_alias(monkeypatch, port, options),
    ):
        with pytest.raises(SessionStoreUnavailable, match='"_pg3_0" already') as refused:
            exchange(make_provider(POOLED), make_provider(POOLED), rounds=10)
        assert refused.value.setting == "STATEMODES_SQL_POOLER"
        assert "max_prepared_statements" in str(refused.value)
        assert isinstance(refused.value.__cause__, psycopg.errors.DuplicatePreparedStatement)
        assert stats(port, database_name(PG))["total_client_parse_count"] == 0  # untracked
        assert server_prepared(port) > 0  # the first client's, left on the server connection
