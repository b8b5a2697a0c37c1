"""SQLite's wait for a session lock: a short bounded back-off that re-checks the lock.

PostgreSQL's NOTIFY wake-ups are tested in test_sql_purge.py; SQLite has no notifications, so
its waiter must neither return while the lock still holds (the core would spin on
get_exclusive) nor sleep long after the release (a slow hand-off), nor poll without bound.

Nothing here is timed: the provider records the answer of every lock check it makes, and the
tests read that record. A hand-off is prompt when the waiter returns at its first check after
the release and its pauses between checks never exceed the cap.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from django_statemodes.providers.sql.sqlite import SQLiteStateProvider
from django_statemodes.testing import new_key
from tests.fixtures_sql import SQLITE

pytestmark = pytest.mark.django_db(databases=["default", SQLITE])

# The back-off: checks after 1, 2, 4, 8 ms, then every 16 ms (the cap).
SCHEDULE = [0.001, 0.002, 0.004, 0.008, 0.016, 0.016, 0.016]


class CheckedSQLite(SQLiteStateProvider):
    """SQLite's provider, recording the answer of each lock check (True: still held)."""

    def __init__(self, alias: str) -> None:
        super().__init__(alias)
        self.checks: list[bool] = []

    def holds(self, session_key: str, lock_id: int) -> bool:
        held = super().holds(session_key, lock_id)
        self.checks.append(held)
        return held


@pytest.fixture
def provider(sql_tables: list[str]) -> Iterator[CheckedSQLite]:
    provider = CheckedSQLite(SQLITE)
    yield provider
    provider.close()


def stored_key(provider: SQLiteStateProvider) -> str:
    key = new_key()
    assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    return key


def lock(provider: SQLiteStateProvider, key: str) -> int:
    held = provider.get_exclusive(key)
    assert held is not None and not held.locked
    return held.lock_id


def locked_key(provider: SQLiteStateProvider) -> tuple[str, int]:
    key = stored_key(provider)
    return key, lock(provider, key)


@dataclass
class Wait:
    """One wait, seen through the provider's checks: those before the release, those after."""

    before: list[bool]
    after: list[bool]
    waiting: bool  # still waiting when the lock was released

    def assert_handed_over_at_the_next_check(self) -> None:
        # Every check before the release saw the lock; the first one that started after it saw
        # it gone and ended the wait (a check under way during the release may still see it).
        assert self.before and all(self.before), self.before
        assert self.after in ([False], [True, False]), self.after


def wait_released_after(provider: CheckedSQLite, key: str, lock_id: int, hold: float) -> Wait:
    """Release the lock ``hold`` s after a waiter starts waiting (10 s timeout, capped at 2)."""
    started = threading.Event()
    returned = threading.Event()
    provider.checks.clear()

    def wait() -> None:
        started.set()
        provider.wait_for_release(key, lock_id, 10.0)
        returned.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert started.wait(5)
    time.sleep(hold)
    waiting = not returned.is_set()
    at_release = len(provider.checks)
    provider.release(key, lock_id)
    waiter.join(timeout=10)
    assert returned.is_set(), "the waiter never returned"
    return Wait(provider.checks[:at_release], provider.checks[at_release:], waiting)


def test_the_back_off_doubles_from_1_ms_to_the_16_ms_cap(provider: CheckedSQLite) -> None:
    assert list(itertools.islice(provider._pauses(10.0), len(SCHEDULE))) == SCHEDULE


def test_a_waiter_does_not_return_while_the_lock_holds(provider: CheckedSQLite) -> None:
    key, lock_id = locked_key(provider)
    started = time.monotonic()
    wait = wait_released_after(provider, key, lock_id, hold=0.5)
    waited = time.monotonic() - started
    assert wait.waiting  # a fixed poll would have returned to the core long before
    wait.assert_handed_over_at_the_next_check()
    # Bounded, not a spin: no more checks than pauses of the schedule fit in the time it took
    # (sleeps never end early, so a busy machine only makes fewer).
    checks = len(wait.before) + len(wait.after)
    assert checks <= len(SCHEDULE) + waited / SCHEDULE[-1], (checks, waited)
    provider.remove(key)


def test_a_long_hold_is_handed_over_at_the_next_check(provider: CheckedSQLite) -> None:
    key = stored_key(provider)
    for _ in range(3):
        wait = wait_released_after(provider, key, lock(provider, key), hold=0.2)
        assert wait.waiting
        wait.assert_handed_over_at_the_next_check()  # at most 16 ms after the release
    provider.remove(key)


def test_a_short_hold_is_handed_over_at_the_next_check(provider: CheckedSQLite) -> None:
    key = stored_key(provider)
    for _ in range(5):
        lock_id = lock(provider, key)
        provider.checks.clear()
        at_release: list[int] = []

        def release(lock_id: int = lock_id, at_release: list[int] = at_release) -> None:
            at_release.append(len(provider.checks))
            provider.release(key, lock_id)

        threading.Timer(0.002, release).start()
        provider.wait_for_release(key, lock_id, 10.0)
        assert at_release, "the wait ended before the release"
        assert not provider.holds(key, lock_id)  # returned because it was released
        checks = provider.checks[:-1]  # the line above checked once more
        # Checks after 1, 3 and 7 ms: a release at 2 ms is seen by the next of them, sooner
        # than a single 10 ms poll, let alone a fixed 16 ms one.
        before, after = checks[: at_release[0]], checks[at_release[0] :]
        assert all(before), before
        assert after in ([False], [True, False]), after
    provider.remove(key)


def test_the_wait_ends_at_its_timeout_while_the_lock_holds(provider: CheckedSQLite) -> None:
    key, lock_id = locked_key(provider)
    provider.checks.clear()
    started = time.monotonic()
    provider.wait_for_release(key, lock_id, 0.1)
    assert time.monotonic() - started >= 0.1  # not before its timeout
    # Not after it either: the schedule fits about 11 checks in 0.1 s; waiting on to the 2 s
    # cap would take over a hundred.
    assert 1 <= len(provider.checks) <= 12, provider.checks
    assert all(provider.checks)
    assert provider.holds(key, lock_id)  # the core then re-reads the lock (and its age)
    provider.release(key, lock_id)
    provider.remove(key)


def test_an_async_waiter_backs_off_and_wakes_at_the_next_check(provider: CheckedSQLite) -> None:
    key, lock_id = locked_key(provider)
    provider.checks.clear()

    async def scenario() -> tuple[bool, int]:
        waiter = asyncio.ensure_future(provider.await_for_release(key, lock_id, 10.0))
        # The event loop keeps running while it waits: 20 turns of 1 ms (and two checks) come
        # and go long before a blocked loop would have let the waiter run into its 2 s cap.
        turns = 0
        while turns < 20 or len(provider.checks) < 2:
            await asyncio.sleep(0.001)
            turns += 1
        waiting = not waiter.done()
        at_release = len(provider.checks)
        await asyncio.to_thread(provider.release, key, lock_id)
        await asyncio.wait_for(waiter, 5.0)
        return waiting, at_release

    waiting, at_release = asyncio.run(scenario())
    assert waiting
    wait = Wait(provider.checks[:at_release], provider.checks[at_release:], waiting)
    wait.assert_handed_over_at_the_next_check()
    provider.remove(key)
