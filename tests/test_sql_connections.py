"""SQL mode's connections: bounded whatever the threads, idle ones closed, native async waits.

``runserver`` serves every request on a new thread, and ASGI runs sync code on threads that
come and go: a connection per thread leaked one PostgreSQL connection (and two SQLite file
handles) per request. Connections are counted where they live: PostgreSQL's
``pg_stat_activity`` (the provider names its connections ``django_statemodes``), and this
process's open file descriptors for SQLite. Wake-ups are proved by the provider's counts of
how waits ended, never by timing; no async path may use the event loop's default executor.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import pytest
from django.db import connections

from django_statemodes.backends.sql import SessionStore
from django_statemodes.core import registry
from django_statemodes.exceptions import SessionPoolExhausted
from django_statemodes.modes import READ_WRITE
from django_statemodes.providers.sql import SQLStateProvider, postgresql
from django_statemodes.providers.sql.postgresql import LISTENING, PostgresStateProvider
from django_statemodes.providers.sql.sqlite import SQLiteStateProvider
from django_statemodes.testing import new_key
from tests.fixtures_sql import ALIASES, PG, PG_ENABLED, SQLITE, MakeProvider, database_name

pytestmark = pytest.mark.django_db(databases=["default", *ALIASES])

BOUND = 4  # STATEMODES_MAX_CONNECTIONS in these tests: well below the threads that call
PATIENCE = 60.0  # bounds every wait of a test; none comes near it when things work
LONG_WAIT = 600.0  # MAX_NOTIFY_WAIT while proving wake-ups: only a NOTIFY ends a wait in time

needs_pg = pytest.mark.skipif(not PG_ENABLED, reason="PostgreSQL is not reachable")

P = ParamSpec("P")
T = TypeVar("T")


def eventually(check: Callable[[], bool]) -> bool:
    """Return True once ``check`` holds, polling up to PATIENCE (a backend that lost its client
    leaves pg_stat_activity a moment later)."""
    deadline = time.monotonic() + PATIENCE
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def pg_connections() -> int:
    """Count the provider's connections to the test database (pool and listener alike)."""
    import psycopg

    params = connections[PG].get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params["application_name"] = "statemodes-tests-counter"
    with psycopg.connect(autocommit=True, **params) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name LIKE 'django_statemodes%%'",
            (database_name(PG),),
        ).fetchone()
    assert row is not None
    return int(row[0])


def sqlite_handles() -> int:
    """Count this process's open file descriptors on the SQLite state database file."""
    path = os.path.realpath(database_name(SQLITE))
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                count += 1
        except OSError:
            pass  # closed meanwhile (the listdir's own descriptor)
    return count


def store_connections(alias: str) -> int:
    return pg_connections() if alias == PG else sqlite_handles()


@pytest.fixture
def bounded(settings: Any) -> None:
    settings.STATEMODES_MAX_CONNECTIONS = BOUND
    settings.STATEMODES_LOCK_WAITING_THREADS = 100  # the waiters here are meant to wait


@pytest.fixture(params=ALIASES)
def engine(request: Any, settings: Any, bounded: None, sql_tables: list[str]) -> Iterator[str]:
    """SQL mode on one alias, its provider closed before and after (nothing left open)."""
    settings.SESSION_ENGINE = "django_statemodes.backends.sql"
    settings.STATEMODES_SQL_DATABASE = request.param
    registry.close_all()
    yield request.param
    registry.close_all()


def new_session() -> str:
    store = SessionStore(None, access=READ_WRITE)
    store["n"] = 0
    store.finish(True)
    assert store.session_key is not None
    return store.session_key


def increment(key: str) -> None:
    """One request's session cycle: lock and load, then save and release."""
    store = SessionStore(key, access=READ_WRITE)
    store["n"] = store["n"] + 1
    store.finish(True)


def count(key: str) -> int:
    value: int = SessionStore(key)["n"]
    return value


def in_threads(targets: list[Callable[[], object]]) -> None:
    """Run each target on a thread of its own, all at once; fail on any error."""
    errors: list[BaseException] = []

    def run(target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert not any(thread.is_alive() for thread in threads), "a thread never finished"
    assert errors == [], errors


def test_a_new_thread_per_request_keeps_connections_bounded(engine: str) -> None:
    before = store_connections(engine)
    key = new_session()
    for _ in range(200):  # runserver's shape: every request on a thread of its own
        in_threads([lambda: increment(key)])
    assert count(key) == 200
    # PostgreSQL: no lock wait here, so no listener; SQLite: one handle per connection.
    assert eventually(lambda: store_connections(engine) - before <= BOUND)
    provider = registry.provider_for(SessionStore)
    assert isinstance(provider, SQLStateProvider)
    assert provider.pool().stats.open <= BOUND


def test_fifty_concurrent_threads_keep_connections_bounded(engine: str) -> None:
    before = store_connections(engine)
    keys = [new_session() for _ in range(5)]

    def requests(key: str) -> Callable[[], None]:
        def run() -> None:
            for _ in range(4):
                increment(key)

        return run

    in_threads([requests(keys[i % 5]) for i in range(50)])  # ten threads per session wait
    assert [count(key) for key in keys] == [40] * 5  # no update lost
    extra = 1 if engine == PG else 0  # PostgreSQL's one listener for the lock waits
    assert eventually(lambda: store_connections(engine) - before <= BOUND + extra)


def test_idle_connections_are_closed_after_the_idle_timeout(engine: str, settings: Any) -> None:
    settings.STATEMODES_CONNECTION_IDLE_TIMEOUT = 0.2
    before = store_connections(engine)
    keys = [new_session() for _ in range(BOUND * 2)]
    in_threads([functools.partial(increment, key) for key in keys])
    provider = registry.provider_for(SessionStore)
    assert isinstance(provider, SQLStateProvider)
    busy = provider.pool().stats.open
    assert busy >= 1
    threading.Event().wait(0.5)  # idle for more than the timeout
    increment(keys[0])  # a call takes the newest connection and closes the stale ones
    assert provider.pool().stats.open == 1
    if engine == PG:
        assert eventually(lambda: pg_connections() - before == 1)
    else:
        # SQLite closes a connection's file descriptor only once no other connection of the
        # process holds a lock on the file (POSIX locks are per process), and reuses it for
        # the next connection: the handles stay within the most connections ever open.
        assert sqlite_handles() - before <= BOUND


@needs_pg
def test_a_quiet_process_closes_idle_connections_by_the_listeners_tick(
    make_provider: MakeProvider, settings: Any, bounded: None
) -> None:
    settings.STATEMODES_CONNECTION_IDLE_TIMEOUT = 0.2
    provider = make_provider(PG)
    assert isinstance(provider, PostgresStateProvider)
    provider.close()
    before = pg_connections()
    listener = provider.listener()
    assert listener.settled.wait(PATIENCE) and listener.state == LISTENING
    keys = [new_key() for _ in range(BOUND * 2)]
    store = functools.partial(provider.set_and_release, lock_id=None, timeout=60, new_item=True)
    in_threads([functools.partial(store, key, b"\x00{}") for key in keys])
    assert pg_connections() - before >= 2  # the listener and at least one pooled connection
    swept = threading.Event()
    for _ in range(int(PATIENCE / 0.1)):  # bounded: the listener sweeps once a second
        if provider.pool().stats.open == 0:
            swept.set()
            break
        threading.Event().wait(0.1)
    assert swept.is_set(), "idle connections stayed open in a quiet process"
    assert eventually(lambda: pg_connections() - before == 1)  # the listener alone
    for key in keys:
        provider.remove(key)


@pytest.mark.parametrize("alias", ALIASES)
def test_an_exhausted_pool_gives_session_pool_exhausted(
    alias: str, make_provider: MakeProvider, settings: Any
) -> None:
    settings.STATEMODES_MAX_CONNECTIONS = 1
    settings.STATEMODES_CONNECTION_WAIT = 0.2
    provider = make_provider(alias)
    key = new_key()
    # The only connection, held (as a long call would hold it).
    with provider.pool().connection(), pytest.raises(SessionPoolExhausted) as raised:
        provider.get(key)
    assert raised.value.setting == "STATEMODES_MAX_CONNECTIONS"
    assert provider.pool().stats.exhausted == 1
    assert provider.get(key) is None  # given back: the provider works again


@needs_pg
def test_an_exhausted_async_pool_gives_session_pool_exhausted(
    make_provider: MakeProvider, settings: Any
) -> None:
    settings.STATEMODES_MAX_CONNECTIONS = 1
    settings.STATEMODES_CONNECTION_WAIT = 0.2
    provider = make_provider(PG)
    assert isinstance(provider, PostgresStateProvider)
    key = new_key()

    async def scenario() -> None:
        async with provider._apools.get().connection():
            with pytest.raises(SessionPoolExhausted):
                await provider.aget(key)
        assert await provider.aget(key) is None

    asyncio.run(scenario())


@needs_pg
def test_the_purge_holds_one_connection_from_set_to_reset(make_provider: MakeProvider) -> None:
    provider = make_provider(PG)
    seen: list[int] = []

    def on_batch(total: int) -> None:
        # During the purge its one connection is lent out: nothing else is idle or open.
        seen.append(provider.pool().stats.open)

    for _ in range(3):
        key = new_key()
        provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=0, new_item=True)
    provider.purge_expired(batch_size=1, on_batch=on_batch)
    assert seen and set(seen) == {1}
    # Given back reset: the next borrower commits synchronously again.
    shown = provider.run(lambda conn: conn.execute("SHOW synchronous_commit").fetchone())
    assert shown == ("on",)


class NoDefaultExecutor(ThreadPoolExecutor):
    """An event loop's default executor that fails any use: async paths must not need it."""

    used = 0

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        NoDefaultExecutor.used += 1
        raise AssertionError("the event loop's default executor was used")


def run_without_default_executor(coroutine: Any) -> Any:
    async def main() -> Any:
        asyncio.get_running_loop().set_default_executor(NoDefaultExecutor(max_workers=1))
        return await coroutine

    NoDefaultExecutor.used = 0
    result = asyncio.run(main())
    assert NoDefaultExecutor.used == 0
    return result


async def lock(provider: SQLStateProvider, key: str) -> int:
    """Take the lock as the core does: ask, and while it is held, wait and ask again."""
    for _ in range(1000):
        item = await provider.aget_exclusive(key)
        assert item is not None
        if not item.locked:
            return item.lock_id
        await provider.await_for_release(key, item.lock_id, LONG_WAIT)
    raise AssertionError("never got the lock")


@needs_pg
def test_async_waiters_use_no_thread_and_another_session_is_not_held_up(
    make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgresql, "MAX_NOTIFY_WAIT", LONG_WAIT)
    provider = make_provider(PG)
    assert isinstance(provider, PostgresStateProvider)
    busy, other = new_key(), new_key()
    for key in (busy, other):
        assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    listener = provider.listener()
    assert listener.settled.wait(PATIENCE) and listener.state == LISTENING
    threads = threading.active_count()
    events: list[str] = []

    async def scenario() -> int:
        busy_id = await lock(provider, busy)
        other_id = await lock(provider, other)

        async def waiter(key: str, name: str) -> None:
            lock_id = await lock(provider, key)
            events.append(name)
            await asyncio.sleep(0)
            await provider.arelease(key, lock_id)

        waiters = [asyncio.ensure_future(waiter(busy, f"busy-{i}")) for i in range(6)]
        third = asyncio.ensure_future(waiter(other, "other"))
        while provider.wakeups.waiters() < 7:  # all of them are waiting now
            await asyncio.sleep(0.01)
        peak = threading.active_count()
        await provider.arelease(other, other_id)
        await asyncio.wait_for(third, PATIENCE)  # granted while busy's holder still holds
        events.append("busy released")
        await provider.arelease(busy, busy_id)
        await asyncio.wait_for(asyncio.gather(*waiters), PATIENCE)
        return peak

    peak = run_without_default_executor(scenario())
    assert peak <= threads  # seven waiters, not one more thread
    assert events[:2] == ["other", "busy released"]
    assert sorted(events[2:]) == [f"busy-{i}" for i in range(6)]
    # Every wait ended by a NOTIFY (or by a mark that found the lock gone), none by a
    # timeout or a poll: a 600 s safety net would have outlasted PATIENCE.
    assert provider.waits.woken + provider.waits.unlocked >= 7 and provider.waits.woken >= 1
    assert provider.waits.timed_out == 0 and provider.waits.fallback == 0
    assert listener.heard >= 2  # the two releases that had marked waiters, at least
    for key in (busy, other):
        provider.remove(key)


@needs_pg
def test_a_blocking_waiter_is_woken_by_notify_not_by_the_fallback(
    make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgresql, "MAX_NOTIFY_WAIT", LONG_WAIT)
    provider = make_provider(PG)
    assert isinstance(provider, PostgresStateProvider)
    key = new_key()
    assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    for _ in range(3):
        held = provider.get_exclusive(key)
        assert held is not None and not held.locked
        done = threading.Event()

        def wait(lock_id: int = held.lock_id, done: threading.Event = done) -> None:
            provider.wait_for_release(key, lock_id, LONG_WAIT)
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        for _ in range(int(PATIENCE / 0.01)):  # bounded: until the waiter is registered
            if provider.wakeups.waiters():
                break
            threading.Event().wait(0.01)
        provider.release(key, held.lock_id)
        assert done.wait(PATIENCE), "no NOTIFY woke the waiter"
    assert provider.waits.timed_out == 0 and provider.waits.fallback == 0
    # Each round ends by the NOTIFY, or by a mark that already found the lock gone.
    assert provider.waits.woken + provider.waits.unlocked == 3
    provider.remove(key)


@needs_pg
def test_close_closes_every_connection_and_the_provider_works_again(
    make_provider: MakeProvider, bounded: None
) -> None:
    provider = make_provider(PG)
    assert isinstance(provider, PostgresStateProvider)
    provider.close()
    before = pg_connections()
    key = new_key()
    assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    listener = provider.listener()
    assert listener.settled.wait(PATIENCE)

    async def use() -> None:
        assert await provider.aget(key) is not None

    for _ in range(5):  # five short-lived loops (async_to_sync's and asyncio.run's shape)
        asyncio.run(use())
    # A closed loop's pool is dropped (and its sockets closed) when another loop comes.
    # sync pool, the last loop's pool, the listener
    assert eventually(lambda: pg_connections() - before <= 3)
    provider.close()
    assert eventually(lambda: pg_connections() == before)
    assert not listener._thread.is_alive()
    assert provider.get(key) is not None  # lazily rebuilt
    asyncio.run(use())
    provider.remove(key)


def test_sqlite_async_runs_in_the_providers_own_executor(
    make_provider: MakeProvider, bounded: None
) -> None:
    provider = make_provider(SQLITE)
    assert isinstance(provider, SQLiteStateProvider)
    key = new_key()
    names: list[str] = []
    real_holds = provider.holds

    def holds(session_key: str, lock_id: int) -> bool:
        names.append(threading.current_thread().name)
        return real_holds(session_key, lock_id)

    provider.holds = holds  # type: ignore[method-assign]

    async def scenario() -> list[str]:
        stored = await provider.aset_and_release(
            key, b"\x00{}", lock_id=None, timeout=60, new_item=True
        )
        assert stored
        first = await lock(provider, key)
        second = asyncio.ensure_future(lock(provider, key))
        while not names:  # the waiter checks the lock in the executor
            await asyncio.sleep(0.001)
        await provider.arelease(key, first)
        lock_id = await asyncio.wait_for(second, PATIENCE)
        await provider.arelease(key, lock_id)
        assert await provider.aremove(key)
        return names

    checked = run_without_default_executor(scenario())
    assert checked and all(name.startswith("statemodes-sqlite") for name in checked)
    assert provider.executor()._max_workers == BOUND
    provider.close()
    assert provider._executor is None


@needs_pg
def test_the_listener_reconnects_and_wakes_every_waiter(
    make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    monkeypatch.setattr(postgresql, "MAX_NOTIFY_WAIT", LONG_WAIT)
    provider = make_provider(PG)
    assert isinstance(provider, PostgresStateProvider)
    key = new_key()
    assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    held = provider.get_exclusive(key)
    assert held is not None and not held.locked
    listener = provider.listener()
    assert listener.settled.wait(PATIENCE) and listener.state == LISTENING
    done = threading.Event()

    def wait() -> None:
        provider.wait_for_release(key, held.lock_id, LONG_WAIT)
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    assert eventually(lambda: provider.wakeups.waiters() == 1)
    # The listener's connection dies (a failover, an idle-session killer): NOTIFYs sent until
    # it listens again are lost, so the waiters must look at their locks again.
    params = connections[PG].get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(autocommit=True, **params) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name = 'django_statemodes listener'",
            (database_name(PG),),
        )
    assert done.wait(PATIENCE), "the waiter slept through the listener's loss"
    assert provider.holds(key, held.lock_id)  # not woken by a release: there was none
    assert provider.waits.woken == 1 and provider.waits.timed_out == 0
    assert eventually(lambda: listener.state == LISTENING)  # it reconnected by itself
    heard = listener.heard
    done.clear()
    threading.Thread(target=wait, daemon=True).start()
    assert eventually(lambda: provider.wakeups.waiters() == 1)
    provider.release(key, held.lock_id)
    assert done.wait(PATIENCE)
    assert provider.waits.timed_out == 0 and provider.waits.fallback == 0
    assert listener.heard >= heard  # the NOTIFY came on the new connection (or the mark saw)
    provider.remove(key)


def test_concurrent_async_requests_lose_no_update_and_use_no_default_executor(
    engine: str,
) -> None:
    async def scenario() -> int:
        store = SessionStore(None, access=READ_WRITE)
        await store.aset("n", 0)
        await store.afinish(True)

        async def request() -> None:
            # An async view's cycle: the first touch locks (waiting for the others), then
            # save and release, all through the engine's native async path.
            session = SessionStore(store.session_key, access=READ_WRITE)
            await session.aset("n", await session.aget("n", 0) + 1)
            await session.afinish(True)

        await asyncio.wait_for(asyncio.gather(*[request() for _ in range(8)]), PATIENCE)
        return int(await SessionStore(store.session_key).aget("n", 0))

    assert run_without_default_executor(scenario()) == 8
