"""SQLite's wait for a session lock: a short bounded back-off that re-checks the lock.

PostgreSQL's NOTIFY wake-ups are tested in test_sql_purge.py; SQLite has no notifications, so
its waiter must neither return while the lock still holds (the core would spin on
get_exclusive) nor sleep long after the release (a slow hand-off), nor poll without bound.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from typing import Any

import pytest

from django_statemodes.providers.sql import SQLStateProvider
from django_statemodes.testing import new_key
from tests import fixtures_sql
from tests.fixtures_sql import SQLITE

pytestmark = pytest.mark.django_db(databases=["default", SQLITE])
make_provider = fixtures_sql.make_provider
sql_tables = fixtures_sql.sql_tables


@pytest.fixture
def provider(make_provider: Any) -> SQLStateProvider:
    provider: SQLStateProvider = make_provider(SQLITE)
    return provider


def stored_key(provider: SQLStateProvider) -> str:
    key = new_key()
    assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    return key


def lock(provider: SQLStateProvider, key: str) -> int:
    held = provider.get_exclusive(key)
    assert held is not None and not held.locked
    return held.lock_id


def locked_key(provider: SQLStateProvider) -> tuple[str, int]:
    key = stored_key(provider)
    return key, lock(provider, key)


def timed_wait(
    provider: SQLStateProvider, key: str, lock_id: int, hold: float
) -> tuple[float, bool, int]:
    """Release the lock ``hold`` s after a waiter starts; return (delay after the release,
    whether the waiter was still waiting just before it, the waiter's lock checks)."""
    started = threading.Event()
    woke: list[float] = []
    checks: list[str] = []

    def wait() -> None:
        # The waiter's own connection, traced: every statement it sends is counted.
        provider.run(lambda conn: conn.set_trace_callback(checks.append))
        started.set()
        provider.wait_for_release(key, lock_id, 10.0)
        woke.append(time.monotonic())
        provider.run(lambda conn: conn.set_trace_callback(None))

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert started.wait(5)
    time.sleep(hold)
    waiting = waiter.is_alive()
    released = time.monotonic()
    provider.release(key, lock_id)
    waiter.join(timeout=10)
    assert woke, "the waiter never returned"
    return woke[0] - released, waiting, len(checks)


def test_a_waiter_does_not_return_while_the_lock_holds(provider: SQLStateProvider) -> None:
    key, lock_id = locked_key(provider)
    delay, waiting, checks = timed_wait(provider, key, lock_id, hold=0.5)
    assert waiting  # a fixed poll would have returned to the core long before
    # Bounded: 1+2+4+8 ms, then one read per 16 ms, about 35 reads in 0.5 s, not a spin.
    assert 20 <= checks <= 60, checks
    assert delay < 0.1, delay
    provider.remove(key)


def test_a_long_hold_is_handed_over_within_the_cap(provider: SQLStateProvider) -> None:
    key = stored_key(provider)
    delays = []
    for _ in range(7):
        delays.append(timed_wait(provider, key, lock(provider, key), hold=0.2)[0])
    # The cap is 16 ms: the median waiter wakes well within 30 ms of the release.
    assert statistics.median(delays) < 0.03, sorted(delays)
    provider.remove(key)


def test_a_short_hold_is_handed_over_in_a_few_milliseconds(provider: SQLStateProvider) -> None:
    key = stored_key(provider)
    waits = []
    for _ in range(9):
        lock_id = lock(provider, key)
        threading.Timer(0.002, provider.release, args=(key, lock_id)).start()
        started = time.monotonic()
        provider.wait_for_release(key, lock_id, 10.0)
        waits.append(time.monotonic() - started)
        assert not provider.holds(key, lock_id)  # returned because it was released
    # Checks at 1, 3 and 7 ms: a release at 2 ms is seen at the 3 or 7 ms check, sooner than
    # a single 10 ms poll, let alone a fixed 16 ms one.
    assert statistics.median(waits) < 0.009, sorted(waits)
    provider.remove(key)


def test_the_wait_ends_at_its_timeout_while_the_lock_holds(provider: SQLStateProvider) -> None:
    key, lock_id = locked_key(provider)
    started = time.monotonic()
    provider.wait_for_release(key, lock_id, 0.1)
    took = time.monotonic() - started
    assert 0.1 <= took < 0.2, took  # the core then re-reads the lock (and its age)
    assert provider.holds(key, lock_id)
    provider.release(key, lock_id)
    provider.remove(key)


def test_an_async_waiter_backs_off_and_wakes_soon_after_the_release(
    provider: SQLStateProvider,
) -> None:
    key, lock_id = locked_key(provider)

    async def scenario() -> tuple[bool, float, int]:
        waiter = asyncio.ensure_future(provider.await_for_release(key, lock_id, 10.0))
        ticks = 0
        stop = time.monotonic() + 0.3
        while time.monotonic() < stop:  # the event loop keeps running while it waits
            await asyncio.sleep(0.005)
            ticks += 1
        waiting = not waiter.done()
        released = time.monotonic()
        await asyncio.to_thread(provider.release, key, lock_id)
        await asyncio.wait_for(waiter, 5.0)
        return waiting, time.monotonic() - released, ticks

    waiting, delay, ticks = asyncio.run(scenario())
    assert waiting
    assert ticks >= 20  # 0.3 s of 5 ms sleeps: the loop was never blocked for long
    assert delay < 0.1, delay
    provider.remove(key)
