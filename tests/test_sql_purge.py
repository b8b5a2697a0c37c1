"""SQL mode's batched purge, its application scope, the short/long payload split, and wake-ups."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections

from django_statemodes.providers.base import ExpiredItem
from django_statemodes.providers.sql import SQLStateProvider, postgresql, schema, statements
from django_statemodes.testing import new_key
from tests.fixtures_sql import ALIASES, PG, PG_ENABLED, MakeProvider, fetch_one

pytestmark = pytest.mark.django_db(databases=["default", *ALIASES])


def fill(provider: SQLStateProvider, count: int, timeout: int) -> list[str]:
    keys = [new_key() for _ in range(count)]
    for i, key in enumerate(keys):
        data = b"\x00" + str(i).encode()
        assert provider.set_and_release(key, data, lock_id=None, timeout=timeout, new_item=True)
    return keys


@pytest.fixture(params=ALIASES)
def provider(request: Any, make_provider: MakeProvider) -> SQLStateProvider:
    provider: SQLStateProvider = make_provider(request.param)
    provider.purge_expired()  # start from no expired rows of this application
    return provider


def test_purge_deletes_in_batches_and_reports_progress(provider: SQLStateProvider) -> None:
    expired = fill(provider, 23, timeout=0)
    live = fill(provider, 5, timeout=60)
    assert provider.purge_expired(dry_run=True) == 23
    progress: list[int] = []
    assert provider.purge_expired(batch_size=5, on_batch=progress.append) == 23
    assert progress == [5, 10, 15, 20, 23]
    assert provider.purge_expired(dry_run=True) == 0
    assert all(provider.get(key) is None for key in expired)
    assert all(provider.get(key) is not None for key in live)


def test_purge_hands_over_payloads_only_when_asked(provider: SQLStateProvider) -> None:
    keys = fill(provider, 4, timeout=0)
    seen: list[ExpiredItem] = []
    assert provider.purge_expired(on_expired=seen.append, batch_size=3) == 4
    assert sorted(item.session_key for item in seen) == sorted(keys)
    by_key = {item.session_key: item.data for item in seen}
    assert [by_key[key] for key in keys] == [b"\x00" + str(i).encode() for i in range(4)]


def test_purge_leaves_other_applications_rows_alone(
    provider: SQLStateProvider, make_provider: MakeProvider
) -> None:
    other = make_provider(provider.alias, app_name="another-site")
    theirs = fill(other, 3, timeout=0)
    fill(provider, 2, timeout=0)
    assert provider.purge_expired() == 2
    assert other.purge_expired(dry_run=True) == 3
    assert other.purge_expired() == 3
    assert all(other.get(key) is None for key in theirs)


def test_the_same_key_in_two_applications_is_two_sessions(
    provider: SQLStateProvider, make_provider: MakeProvider
) -> None:
    other = make_provider(provider.alias, app_name="another-site")
    key = new_key()
    assert provider.set_and_release(key, b"\x00mine", lock_id=None, timeout=60, new_item=True)
    assert other.get(key) is None
    assert other.set_and_release(key, b"\x00theirs", lock_id=None, timeout=60, new_item=True)
    assert provider.get(key).data == b"\x00mine"  # type: ignore[union-attr]
    provider.remove(key)
    other.remove(key)


def stored_columns(provider: SQLStateProvider, key: str) -> tuple[Any, Any]:
    # On the provider's own autocommit connection: the test's Django connection is inside a
    # transaction whose snapshot (SQLite WAL) would show an older row.
    sql = (
        'SELECT "SessionItemShort", "SessionItemLong" FROM "ASPStateTempSessions" '
        'WHERE "SessionId" = %s'
    )
    return fetch_one(provider, sql, (provider.sid(key),))  # type: ignore[no-any-return]


def test_payloads_over_7000_bytes_go_to_session_item_long(provider: SQLStateProvider) -> None:
    key = new_key()
    small, large = b"\x00" + b"s" * 6999, b"\x00" + b"l" * 7000
    assert provider.set_and_release(key, small, lock_id=None, timeout=60, new_item=True)
    short, long = stored_columns(provider, key)
    assert bytes(short) == small and long is None
    held = provider.get_exclusive(key)
    assert held is not None
    assert provider.set_and_release(key, large, lock_id=held.lock_id, timeout=60)
    short, long = stored_columns(provider, key)
    assert short is None and bytes(long) == large
    item = provider.get(key)
    assert item is not None and item.data == large
    provider.remove(key)


def test_the_application_row_is_registered_on_first_use(provider: SQLStateProvider) -> None:
    provider.get(new_key())
    with connections[provider.alias].cursor() as cursor:
        cursor.execute(
            schema.application_name_statement(connections[provider.alias]), [provider.app_id]
        )
        assert cursor.fetchone()[0].rstrip() == provider.app_name


# PostgreSQL's waits end at the holder's NOTIFY, or at a 2 s safety net (MAX_NOTIFY_WAIT). The
# wake-up tests raise the net far above their patience (WAKE_UP): only a NOTIFY ends a wait in
# time, and none of them needs to know how fast it came.
LONG_WAIT = 600.0
WAKE_UP = 60.0


@pytest.fixture
def no_safety_net(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgresql, "MAX_NOTIFY_WAIT", LONG_WAIT)


def wait_and_record(
    provider: SQLStateProvider,
    key: str,
    lock_id: int,
    events: list[str],
    returned: threading.Event,
) -> None:
    provider.wait_for_release(key, lock_id, LONG_WAIT)
    events.append("woken")
    returned.set()


@pytest.mark.skipif(not PG_ENABLED, reason="PostgreSQL is not reachable")
@pytest.mark.usefixtures("no_safety_net")
def test_a_waiter_is_woken_by_notify(make_provider: MakeProvider) -> None:
    provider = make_provider(PG)
    key = fill(provider, 1, timeout=60)[0]
    for _ in range(3):
        held = provider.get_exclusive(key)
        assert held is not None and not held.locked
        events: list[str] = []
        returned = threading.Event()
        args = (provider, key, held.lock_id, events, returned)
        threading.Thread(target=wait_and_record, args=args, daemon=True).start()
        time.sleep(0.2)  # the waiter is listening by now (if not, its mark sees the release)
        assert not returned.is_set()  # the lock holds: nothing woke it
        events.append("released")
        provider.release(key, held.lock_id)
        assert returned.wait(WAKE_UP), "no NOTIFY woke the waiter"
        assert events == ["released", "woken"]
    provider.remove(key)


@pytest.mark.skipif(not PG_ENABLED, reason="PostgreSQL is not reachable")
def test_a_release_sends_a_notify_only_when_a_waiter_marked_the_item(
    make_provider: MakeProvider,
) -> None:
    provider: SQLStateProvider = make_provider(PG)
    key = fill(provider, 1, timeout=60)[0]
    sid = provider.sid(key)
    listener = provider.connect()
    try:
        listener.execute(f"LISTEN {statements.CHANNEL}")
        held = provider.get_exclusive(key)
        assert held is not None
        provider.release(key, held.lock_id)
        quiet = [n.payload for n in listener.notifies(timeout=0.5) if n.payload == sid]
        assert quiet == []  # nobody waited: no NOTIFY (and no commit-time queue lock)
        held = provider.get_exclusive(key)
        assert held is not None
        waiter = threading.Thread(target=provider.wait_for_release, args=(key, held.lock_id, 5.0))
        waiter.start()
        time.sleep(0.3)  # the waiter has listened and marked the item
        assert provider.set_and_release(key, b"\x00x", lock_id=held.lock_id, timeout=60)
        waiter.join(timeout=5)
        heard = [n.payload for n in listener.notifies(timeout=1.0, stop_after=1)]
        assert heard == [sid]
        again = provider.get_exclusive(key)  # a new lock forgets the old waiters
        assert again is not None
        provider.release(key, again.lock_id)
        assert [n.payload for n in listener.notifies(timeout=0.5) if n.payload == sid] == []
    finally:
        listener.close()
    provider.remove(key)


@pytest.mark.skipif(not PG_ENABLED, reason="PostgreSQL is not reachable")
@pytest.mark.usefixtures("no_safety_net")
def test_an_async_waiter_is_woken_by_notify_not_by_polling(make_provider: MakeProvider) -> None:
    provider = make_provider(PG)
    key = fill(provider, 1, timeout=60)[0]

    async def wait_once(lock_id: int) -> list[str]:
        events: list[str] = []

        async def wait() -> None:
            await provider.await_for_release(key, lock_id, LONG_WAIT)
            events.append("woken")

        waiter = asyncio.ensure_future(wait())
        await asyncio.sleep(0.3)  # listening and marked by now
        assert not waiter.done()  # no poll interval elapsed into a return
        events.append("released")
        await asyncio.to_thread(provider.release, key, lock_id)
        await asyncio.wait_for(waiter, WAKE_UP)
        return events

    for _ in range(3):
        held = provider.get_exclusive(key)
        assert held is not None and not held.locked
        assert asyncio.run(wait_once(held.lock_id)) == ["released", "woken"]
    provider.remove(key)


@pytest.mark.skipif(not PG_ENABLED, reason="PostgreSQL is not reachable")
@pytest.mark.usefixtures("no_safety_net")
def test_racing_waiters_lose_no_update_and_no_wake_up(make_provider: MakeProvider) -> None:
    provider = make_provider(PG)
    key = fill(provider, 1, timeout=60)[0]
    assert provider.set_and_release(key, b"\x000", lock_id=None, timeout=60)
    waits: list[int] = []
    errors: list[BaseException] = []

    def increment(_: int) -> None:
        try:
            for _ in range(25):
                while True:
                    item = provider.get_exclusive(key)
                    assert item is not None
                    if not item.locked:
                        break
                    # A lost wake-up would leave this thread here for LONG_WAIT.
                    provider.wait_for_release(key, item.lock_id, LONG_WAIT)
                    waits.append(1)
                assert item.data is not None
                value = int(item.data[1:]) + 1
                saved = provider.set_and_release(
                    key, b"\x00" + str(value).encode(), lock_id=item.lock_id, timeout=60
                )
                assert saved
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=increment, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + WAKE_UP
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a wake-up was lost"
    assert not errors, errors
    final = provider.get(key)
    assert final is not None and final.data == b"\x00100"
    assert waits, "the threads never contended"
    provider.remove(key)


def test_purge_sessions_command_uses_the_batched_purge(
    settings: Any, make_provider: MakeProvider
) -> None:
    settings.SESSION_ENGINE = "django_statemodes.backends.sql"
    settings.STATEMODES_SQL_DATABASE = ALIASES[-1]
    provider = make_provider(ALIASES[-1])
    provider.purge_expired()
    fill(provider, 7, timeout=0)
    call_command("purge_sessions", batch_size=2, verbosity=0)
    assert provider.purge_expired(dry_run=True) == 0
