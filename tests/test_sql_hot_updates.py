"""Lean writes on PostgreSQL: Expires slides with a granularity, so steady cycles are HOT updates.

A HOT (heap-only tuple) update changes no indexed column and finds room in the row's page: it
adds no index entry. PostgreSQL counts them in ``pg_stat_user_tables`` (``n_tup_hot_upd`` of
``n_tup_upd``); these tests read those counts, never a clock.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connections

from django_statemodes.providers.sql.postgresql import FILLFACTOR
from django_statemodes.providers.sql.schema import SESSIONS
from django_statemodes.testing import new_key
from tests.fixtures_sql import PG, MakeProvider, enabled_among, fetch_one

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(databases=["default", *enabled_among(PG)]),
    pytest.mark.skipif(not enabled_among(PG), reason="PostgreSQL is not reachable"),
]

SESSIONS_IN_LOAD = 10
CYCLES_PER_SESSION = 30
# Each cycle is two UPDATEs of one row: lock and load, then save and release.
UPDATES_PER_CYCLE = 2
PAYLOAD = b"\x00" + json.dumps({"cart": ["x" * 40] * 24}).encode()  # ~1 KB, stored inline


def update_counts() -> tuple[int, int]:
    """``(n_tup_upd, n_tup_hot_upd)`` of the sessions table, as flushed so far."""
    with connections[PG].cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = %s",
            [SESSIONS],
        )
        row: Any = cursor.fetchone()
    return int(row[0]), int(row[1])


def flushed_counts(at_least: int, before: tuple[int, int]) -> tuple[int, int]:
    """Wait (bounded) until the statistics hold ``at_least`` more updates than ``before``.

    A backend sends its table statistics when it goes idle (at most once a second) or exits.
    """
    for _ in range(300):
        updates, hot = update_counts()
        if updates - before[0] >= at_least:
            return updates - before[0], hot - before[1]
        with connections[PG].cursor() as cursor:
            cursor.execute("SELECT pg_sleep(0.1)")
    raise AssertionError(f"the statistics never counted {at_least} updates")


def expires_in(provider: Any, key: str) -> float:
    """Seconds from now to the row's stored Expires."""
    row = fetch_one(
        provider,
        'SELECT extract(epoch FROM "Expires" - now())::float8 FROM "ASPStateTempSessions" '
        'WHERE "SessionId" = %s',
        (provider.sid(key),),
    )
    return float(row[0])


def set_expires_in(provider: Any, key: str, seconds: float) -> None:
    fetch_one(
        provider,
        'UPDATE "ASPStateTempSessions" SET "Expires" = now() + %s * interval \'1 second\' '
        'WHERE "SessionId" = %s RETURNING 1',
        (seconds, provider.sid(key)),
    )


def test_installsqlstate_leaves_room_in_each_page_for_hot_updates(sql_tables: list[str]) -> None:
    with connections[PG].cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = %s", [SESSIONS])
        row: Any = cursor.fetchone()

    assert row[0] == [f"fillfactor={FILLFACTOR}"]
    assert FILLFACTOR < 100


def test_a_steady_cycle_load_is_at_least_90_percent_hot_updates(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider(PG)
    keys = [new_key() for _ in range(SESSIONS_IN_LOAD)]
    for key in keys:
        assert provider.set_and_release(key, PAYLOAD, lock_id=None, timeout=1200, new_item=True)
    before = update_counts()

    for _ in range(CYCLES_PER_SESSION):
        for key in keys:
            item = provider.get_exclusive(key)
            assert item is not None and not item.locked
            assert provider.set_and_release(key, PAYLOAD, lock_id=item.lock_id, timeout=1200)
    provider.close()  # its connections end: their backends send their statistics
    expected = SESSIONS_IN_LOAD * CYCLES_PER_SESSION * UPDATES_PER_CYCLE
    updates, hot = flushed_counts(expected, before)

    assert updates >= expected
    assert hot / updates >= 0.9, f"{hot} HOT updates of {updates}"


def test_expires_moves_only_when_it_lags_by_more_than_the_granularity(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider(PG)
    key = new_key()
    # 100 s of timeout: the granularity is 1 % of it, 1 s.
    assert provider.set_and_release(key, PAYLOAD, lock_id=None, timeout=100, new_item=True)

    set_expires_in(provider, key, 99.5)  # lags half a second: a read leaves it
    assert provider.get(key) is not None
    assert expires_in(provider, key) < 99.6

    set_expires_in(provider, key, 97)  # lags 3 s: a read slides it fully
    assert provider.get(key) is not None
    assert expires_in(provider, key) > 99.5

    set_expires_in(provider, key, 99.5)  # a write follows the same rule
    assert provider.set_and_release(key, PAYLOAD, lock_id=None, timeout=100)
    assert expires_in(provider, key) < 99.6
    set_expires_in(provider, key, 97)
    assert provider.set_and_release(key, PAYLOAD, lock_id=None, timeout=100)
    assert expires_in(provider, key) > 99.5

    # A shorter timeout moves Expires back at once: the granularity never extends a session.
    assert provider.set_and_release(key, PAYLOAD, lock_id=None, timeout=50)
    assert 49 < expires_in(provider, key) <= 50
    item = provider.get_exclusive(key)
    assert item is not None
    assert 49 < expires_in(provider, key) <= 50
