"""The Redis provider's native async path, its bounded connections and its PUBLISH wake-ups.

Each test runs its own redis-server on a free port, so that ``CLIENT LIST`` counts only this
process's connections (and the observer's own).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from django_statemodes.exceptions import SessionPoolExhausted
from django_statemodes.items import StateItem
from django_statemodes.providers.redis import RedisProvider
from django_statemodes.providers.wakeups import Wakeups
from django_statemodes.testing import new_key
from tests.redis_servers import RedisServer, running
from tests.test_redis_topologies import sentinel, sentinel_cache

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PAYLOAD = b"\x00{}"
BOUND = 4
LONG = 60.0  # a lock wait's timeout: only a wake-up ends it in time


class CountingWakeups(Wakeups):
    """The provider's real Wakeups, counting the wake-ups its subscriber delivers."""

    def __init__(self) -> None:
        super().__init__()
        self.woken: list[str] = []

    def wake(self, key: str) -> None:
        self.woken.append(key)
        super().wake(key)


class RefusingExecutor(concurrent.futures.ThreadPoolExecutor):
    """A default executor that refuses work: proves a coroutine never ran in it."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the default executor was used for {fn!r}")


@pytest.fixture
def server(settings: Any) -> Iterator[RedisServer]:
    server = RedisServer()
    with running(server):
        settings.CACHES = {
            **settings.CACHES,
            "private": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": server.url,
                "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 5},
            },
        }
        settings.STATEMODES_MAX_CONNECTIONS = BOUND
        settings.STATEMODES_CONNECTION_WAIT = 0.3
        yield server


@pytest.fixture
def provider(server: RedisServer) -> Iterator[RedisProvider]:
    provider = RedisProvider(cache_alias="private")
    provider.wakeups = CountingWakeups()  # before the first use: the subscriber takes it
    yield provider
    provider.close()


def connections(server: RedisServer) -> int:
    """This process's connections to ``server``, without the observer's own."""
    observer = redis.Redis(port=server.port)
    try:
        return len(observer.client_list()) - 1
    finally:
        observer.close()


def woken(provider: RedisProvider) -> list[str]:
    assert isinstance(provider.wakeups, CountingWakeups)
    return provider.wakeups.woken


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def lock_when_free(provider: RedisProvider, key: str) -> StateItem:
    """What the core does for a locked session: get_exclusive, wait, and again."""
    while True:
        item = provider.get_exclusive(key)
        assert item is not None
        if not item.locked:
            return item
        provider.wait_for_release(key, item.lock_id, LONG)


def item_key(key: str) -> str:
    return f"statemodes:default:s:{{{key}}}"


def flagged(server: RedisServer, key: str) -> bool:
    """Whether a waiter's last look flagged the item (so its release will PUBLISH)."""
    return redis.Redis(port=server.port).hget(item_key(key), "wt") == b"1"


# Native async: every a-twin, no thread of the default executor.


def test_async_twins_run_natively_and_never_use_the_default_executor(
    server: RedisServer, provider: RedisProvider
) -> None:
    key = new_key()
    events: list[str] = []

    async def waiter() -> None:
        while True:
            item = await provider.aget_exclusive(key)
            assert item is not None
            if not item.locked:
                events.append("acquired")
                await provider.arelease(key, item.lock_id)
                return
            await provider.await_for_release(key, item.lock_id, LONG)

    async def scenario() -> None:
        asyncio.get_running_loop().set_default_executor(RefusingExecutor())
        assert await provider.aget(key) is None
        assert await provider.aset_and_release(
            key, PAYLOAD, lock_id=None, timeout=60, new_item=True
        )
        held = await provider.aget_exclusive(key)
        assert held is not None and not held.locked and held.data == PAYLOAD
        busy = await provider.aget_exclusive(key)
        assert busy is not None and busy.locked and busy.lock_id == held.lock_id
        task = asyncio.create_task(waiter())
        deadline = time.monotonic() + 30
        while not (provider.wakeups.waiters() == 1 and flagged(server, key)):
            assert time.monotonic() < deadline, "the waiter never went to sleep"
            await asyncio.sleep(0.01)
        events.append("released")
        assert await provider.aset_and_release(key, b"\x00{2}", lock_id=held.lock_id, timeout=60)
        await asyncio.wait_for(task, LONG)
        item = await provider.aget(key)
        assert item is not None and item.data == b"\x00{2}" and not item.locked
        assert await provider.aremove(key)
        assert await provider.aget(key) is None
        assert not await provider.aremove(key)

    asyncio.run(scenario())
    assert events == ["released", "acquired"]
    assert woken(provider) == [key]  # by the PUBLISH of the save-and-release, not a timeout


def test_an_async_pool_that_stays_busy_raises_session_pool_exhausted(
    provider: RedisProvider,
) -> None:
    async def scenario() -> None:
        assert await provider.aget(new_key()) is None  # builds this loop's pool
        aclient = provider._aclients.get()[provider._server(item_key("x")).name]
        # Every connection of the pool busy in a BLPOP: nothing is left for a session call.
        blockers: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(aclient.blpop(["statemodes-test-block"], 3)) for _ in range(BOUND)
        ]
        await asyncio.sleep(0.2)
        with pytest.raises(SessionPoolExhausted, match="STATEMODES_MAX_CONNECTIONS"):
            await provider.aget(new_key())
        for blocker in blockers:
            blocker.cancel()
        await asyncio.gather(*blockers, return_exceptions=True)

    asyncio.run(scenario())


def test_a_blocking_pool_that_stays_busy_raises_session_pool_exhausted(
    provider: RedisProvider,
) -> None:
    client = provider._server(item_key("x")).client
    started = threading.Barrier(BOUND + 1)

    def block() -> None:
        started.wait(10)
        client.blpop(["statemodes-test-block"], 2)

    threads = [threading.Thread(target=block) for _ in range(BOUND)]
    for thread in threads:
        thread.start()
    started.wait(10)
    pool: Any = client.connection_pool
    wait_until(lambda: pool.pool.empty(), "the blockers never took the pool")
    try:
        with pytest.raises(SessionPoolExhausted) as caught:
            provider.get(new_key())
        assert caught.value.setting == "STATEMODES_MAX_CONNECTIONS"
    finally:
        for thread in threads:
            thread.join(10)
    assert provider.get(new_key()) is None  # the pool serves again once they are back


# Wake-ups: a waiter holds no connection; one subscriber per process.


def test_twenty_waiters_hold_no_connection_and_one_publish_wakes_them_all(
    server: RedisServer, provider: RedisProvider
) -> None:
    key, other = new_key(), new_key()
    for name in (key, other):
        assert provider.set_and_release(name, PAYLOAD, lock_id=None, timeout=60, new_item=True)
    held = provider.get_exclusive(key)
    assert held is not None and not held.locked
    provider.wait_for_release(other, 0, 0.01)  # starts the subscriber, as a first wait does
    subscriber = provider._server(item_key(key)).subscriber
    wait_until(subscriber.ready.is_set, "the subscriber never subscribed")
    returned: list[int] = []  # waiters whose first wait ended
    acquired: list[int] = []
    errors: list[BaseException] = []

    def waiter(index: int) -> None:
        try:
            item = provider.get_exclusive(key)
            assert item is not None and item.locked
            provider.wait_for_release(key, item.lock_id, LONG)
            returned.append(index)
            item = lock_when_free(provider, key)  # then each takes its turn
            acquired.append(index)
            provider.release(key, item.lock_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(20)]
    for thread in threads:
        thread.start()
    wait_until(
        lambda: provider.wakeups.waiters() == 20 and flagged(server, key),
        "the waiters never all slept",
    )
    # Twenty sleeping waiters: the bounded pool (at most BOUND) and one subscriber.
    assert connections(server) <= BOUND + 1
    # Another session's request goes through meanwhile.
    unrelated = provider.get_exclusive(other)
    assert unrelated is not None and not unrelated.locked
    assert provider.set_and_release(other, b"\x00{1}", lock_id=unrelated.lock_id, timeout=60)
    assert returned == [] and acquired == [] and not errors
    provider.release(key, held.lock_id)
    wait_until(lambda: len(returned) == 20 or errors, "the waiters were not all woken")
    # One release, one PUBLISH, delivered once: it woke all twenty.
    assert woken(provider)[:1] == [key]
    assert woken(provider).count(key) >= 1
    for thread in threads:
        thread.join(LONG)
    assert not errors, errors
    assert sorted(acquired) == list(range(20))
    assert connections(server) <= BOUND + 1


def test_a_release_without_waiters_publishes_nothing(
    server: RedisServer, provider: RedisProvider
) -> None:
    observer = redis.Redis(port=server.port)
    before = observer.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
    for _ in range(20):
        key = new_key()
        assert provider.set_and_release(key, PAYLOAD, lock_id=None, timeout=60, new_item=True)
        item = provider.get_exclusive(key)
        assert item is not None
        assert provider.set_and_release(key, PAYLOAD, lock_id=item.lock_id, timeout=60)
        item = provider.get_exclusive(key)
        assert item is not None
        provider.release(key, item.lock_id)
        assert provider.remove(key)
    after = observer.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
    assert after == before


def test_the_subscriber_subscribes_again_after_a_redis_restart(
    server: RedisServer, provider: RedisProvider
) -> None:
    key = new_key()
    assert provider.set_and_release(key, PAYLOAD, lock_id=None, timeout=60, new_item=True)
    held = provider.get_exclusive(key)
    assert held is not None
    provider.wait_for_release(key, held.lock_id, 0.2)  # starts the subscriber
    subscriber = provider._server(item_key(key)).subscriber
    wait_until(subscriber.ready.is_set, "the subscriber never subscribed")
    server.kill()
    wait_until(lambda: not subscriber.ready.is_set(), "the subscriber never saw Redis go")
    server.start()
    wait_until(subscriber.ready.is_set, "the subscriber never came back")
    assert woken(provider) == []  # wake_all() is not a message: nothing published
    assert provider.get(key) is None  # the restart (no persistence) lost the session


# Bounded connections, whatever the number of threads and loops that ever served.


def test_two_hundred_cycles_from_new_threads_and_loops_stay_within_the_bound(
    server: RedisServer, provider: RedisProvider
) -> None:
    errors: list[BaseException] = []
    most = 0

    def cycle() -> None:
        try:
            key = new_key()
            assert provider.set_and_release(key, PAYLOAD, lock_id=None, timeout=60, new_item=True)
            item = provider.get_exclusive(key)
            assert item is not None
            assert provider.set_and_release(key, PAYLOAD, lock_id=item.lock_id, timeout=60)
            assert provider.remove(key)
        except BaseException as exc:
            errors.append(exc)

    async def acycle() -> None:
        key = new_key()
        assert await provider.aset_and_release(
            key, PAYLOAD, lock_id=None, timeout=60, new_item=True
        )
        item = await provider.aget_exclusive(key)
        assert item is not None
        assert await provider.aset_and_release(key, PAYLOAD, lock_id=item.lock_id, timeout=60)
        assert await provider.aremove(key)

    async def ten_cycles() -> None:
        await asyncio.gather(*(acycle() for _ in range(10)))

    def async_cycles() -> None:
        try:
            asyncio.run(ten_cycles())  # a new event loop each time, as async_to_sync makes
        except BaseException as exc:
            errors.append(exc)

    for _ in range(20):  # 20 rounds of 10 new threads at once: 200 cycles
        threads = [threading.Thread(target=cycle) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(LONG)
        most = max(most, connections(server))
    assert not errors, errors
    assert most <= BOUND  # the blocking pool, never a connection per thread
    for _ in range(20):  # 20 new threads, one after the other, each a new loop of 10 tasks
        thread = threading.Thread(target=async_cycles)
        thread.start()
        thread.join(LONG)
        most = max(most, connections(server))
    assert not errors, errors
    # Plus one event loop's pool (those of ended loops are shut down when a new loop comes),
    # never a connection per task or per loop that ever ran.
    assert most <= 2 * BOUND


# Topologies redis.asyncio is not built for here: Sentinel runs in our own small executor.


def test_through_sentinel_the_async_twins_run_without_the_default_executor(
    settings: Any, tmp_path: Path
) -> None:
    primary = RedisServer()
    with running(primary), sentinel(tmp_path, primary) as (watcher, name):
        settings.CACHES = {**settings.CACHES, "topology": sentinel_cache(watcher, name)}
        provider = RedisProvider(cache_alias="topology")
        key = new_key()

        async def scenario() -> None:
            asyncio.get_running_loop().set_default_executor(RefusingExecutor())
            assert await provider.aset_and_release(
                key, PAYLOAD, lock_id=None, timeout=60, new_item=True
            )
            held = await provider.aget_exclusive(key)
            assert held is not None and not held.locked
            busy = await provider.aget_exclusive(key)
            assert busy is not None and busy.locked
            await provider.await_for_release(key, held.lock_id, 0.2)
            assert await provider.aset_and_release(key, PAYLOAD, lock_id=held.lock_id, timeout=60)
            assert await provider.aremove(key)

        try:
            asyncio.run(scenario())
            assert redis.Redis(port=primary.port).exists(item_key(key)) == 0
        finally:
            provider.close()


def test_a_shard_client_wakes_async_waiters_from_each_shard(settings: Any) -> None:
    one, two = RedisServer(), RedisServer()
    with running(one, two):
        settings.CACHES = {
            **settings.CACHES,
            "topology": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": [one.url, two.url],
                "OPTIONS": {"CLIENT_CLASS": "django_redis.client.ShardClient"},
            },
        }
        provider = RedisProvider(cache_alias="topology")
        provider.wakeups = CountingWakeups()
        # Random keys: with 8 of them all landed on one shard in about one run of 128; with
        # 16, about one in 32,768 (the test needs both shards to serve some).
        keys = [new_key() for _ in range(16)]

        def flagged_on(key: str) -> bool:
            return flagged(one, key) or flagged(two, key)

        async def waiter(key: str) -> None:
            while True:
                item = await provider.aget_exclusive(key)
                assert item is not None
                if not item.locked:
                    await provider.arelease(key, item.lock_id)
                    return
                await provider.await_for_release(key, item.lock_id, LONG)

        async def scenario() -> None:
            asyncio.get_running_loop().set_default_executor(RefusingExecutor())
            held = {}
            for key in keys:
                assert await provider.aset_and_release(
                    key, PAYLOAD, lock_id=None, timeout=60, new_item=True
                )
                item = await provider.aget_exclusive(key)
                assert item is not None
                held[key] = item.lock_id
            tasks = [asyncio.create_task(waiter(key)) for key in keys]
            deadline = time.monotonic() + 30
            while provider.wakeups.waiters() < len(keys) or not all(map(flagged_on, keys)):
                assert time.monotonic() < deadline, "the waiters never all slept"
                await asyncio.sleep(0.01)
            for key in keys:
                await provider.arelease(key, held[key])
            await asyncio.wait_for(asyncio.gather(*tasks), LONG)

        try:
            asyncio.run(scenario())
            counts = [
                redis.Redis(port=s.port).zcard("statemodes:default:expiry") for s in (one, two)
            ]
            assert sum(counts) == len(keys) and min(counts) > 0  # both shards served
            assert sorted(woken(provider)) == sorted(keys)
        finally:
            provider.close()


# Through the engine: a sleeping waiter runs no command, and wakes on the release.


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_sleeping_waiter_runs_no_command_and_wakes_on_the_release(
    settings: Any, server: RedisServer, flavour: str
) -> None:
    from django_statemodes.backends.custom import SessionStore

    settings.SESSION_ENGINE = "django_statemodes.backends.custom"
    settings.STATEMODES_CUSTOM_PROVIDER = "django_statemodes.providers.redis.RedisProvider"
    settings.STATEMODES_REDIS_ALIAS = "private"
    provider = SessionStore.get_provider()
    assert isinstance(provider, RedisProvider)
    first = SessionStore()
    first["n"] = 1
    first.save()
    key = first.session_key
    assert key is not None
    holder = SessionStore(key, access="ReadWrite")
    assert holder["n"] == 1  # the holder now has the lock
    provider.wait_for_release(new_key(), 0, 0.01)  # starts the subscriber
    wait_until(provider._server(item_key(key)).subscriber.ready.is_set, "no subscriber")
    values: list[Any] = []
    errors: list[BaseException] = []

    def waiter() -> None:
        store = SessionStore(key, access="ReadWrite")
        try:
            if flavour == "sync":
                value = store.get("n")
            else:
                value = asyncio.run(store.aget("n"))
            values.append(value)  # the holder's write, read under the lock it released
            store.release()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        wait_until(
            lambda: provider.wakeups.waiters() == 1 and flagged(server, key),
            "the waiter never went to sleep",
        )
        observer = redis.Redis(port=server.port)
        before = command_counts(observer)
        time.sleep(1.0)
        after = command_counts(observer)
        # Asleep, having run nothing for a second (a 50 ms poller runs ~20 scripts here).
        ran = {name: after[name] - before.get(name, 0) for name in after}
        assert sum(ran.values()) == 0, ran
        assert provider.wakeups.waiters() == 1 and values == []
        holder["n"] = 2
        holder.release()
    finally:
        thread.join(LONG)
    assert not errors, errors
    assert values == [2]


def command_counts(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started, without the INFO calls that read them."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name != "cmdstat_info"
    }
