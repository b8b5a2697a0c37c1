"""RedisProvider over django-redis's other topologies, each on private redis-server processes:
a primary with a replica, a ShardClient over two servers, and Sentinel, failover included."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client

from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.providers.base import ExpiredItem
from django_statemodes.providers.redis import RedisProvider
from django_statemodes.testing import new_key
from tests.conftest import free_port
from tests.redis_servers import RedisServer, running

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PAYLOAD = b"\x00{}"
WRITTEN = b"\x00{1}"  # what lock_and_write leaves


def item_key(key: str) -> str:
    return f"statemodes:default:s:{{{key}}}"


def command(client: Any, *args: object) -> Any:
    """``client.execute_command(*args)``: redis-py leaves that method unannotated."""
    return client.execute_command(*args)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def replica_of(replica: RedisServer, primary: RedisServer) -> redis.Redis:
    """Wait until ``replica`` has synced from ``primary``; return a client of the replica."""
    client = redis.Redis(port=replica.port)
    wait_for(
        lambda: client.info("replication").get("master_link_status") == "up",
        "the replica never synced",
    )
    role = command(client, "ROLE")
    assert role[0] == b"slave" and int(role[2]) == primary.port and role[3] == b"connected"
    return client


def cache(location: Any, **options: Any) -> dict[str, Any]:
    return {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": location, "OPTIONS": options}


def use_cache(settings: Any, config: dict[str, Any]) -> RedisProvider:
    settings.CACHES = {**settings.CACHES, "topology": config}
    return RedisProvider(cache_alias="topology")


def lock_and_write(provider: RedisProvider, key: str) -> None:
    assert provider.set_and_release(key, PAYLOAD, lock_id=None, timeout=60, new_item=True)
    held = provider.get_exclusive(key)
    assert held is not None and not held.locked
    assert provider.get_exclusive(key).locked  # type: ignore[union-attr]
    assert provider.set_and_release(key, WRITTEN, lock_id=held.lock_id, timeout=60)
    item = provider.get(key)
    assert item is not None and item.data == WRITTEN and not item.locked


def test_with_a_replica_every_call_goes_to_the_primary(settings: Any) -> None:
    primary = RedisServer()
    with running(primary):
        replica = RedisServer("--replicaof", "127.0.0.1", str(primary.port))
        with running(replica):
            to_replica = replica_of(replica, primary)
            with pytest.raises(redis.ReadOnlyError):
                to_replica.set("probe", "1")  # any write of the provider sent there would fail
            to_primary = redis.Redis(port=primary.port)
            provider = use_cache(settings, cache([primary.url, replica.url]))
            keys = [new_key() for _ in range(20)]
            for key in keys:
                lock_and_write(provider, key)
            assert to_primary.exists(item_key(keys[0]))
            # Replication works: every session reached the replica, which a failover promotes.
            assert command(to_primary, "WAIT", 1, 5000) == 1
            assert all(to_replica.hget(item_key(key), "d") == WRITTEN for key in keys)
            # Reads too ran on the primary: the replica got the scripts' effects, never a
            # script (django-redis sends a plain client's reads to a replica).
            assert "cmdstat_evalsha" not in to_replica.info("commandstats")
            assert to_primary.info("commandstats")["cmdstat_evalsha"]["calls"] >= 5 * len(keys)


def test_a_shard_client_spreads_sessions_and_purges_every_shard(settings: Any) -> None:
    one, two = RedisServer(), RedisServer()
    with running(one, two):
        config = cache([one.url, two.url], CLIENT_CLASS="django_redis.client.ShardClient")
        provider = use_cache(settings, config)
        keys = [new_key() for _ in range(40)]
        for key in keys:
            lock_and_write(provider, key)
        counts = [redis.Redis(port=s.port).zcard("statemodes:default:expiry") for s in (one, two)]
        assert sum(counts) == 40 and min(counts) > 0  # both shards hold sessions
        short = [new_key() for _ in range(10)]
        for key in short:
            assert provider.set_and_release(key, PAYLOAD, lock_id=None, timeout=1, new_item=True)
        time.sleep(1.2)
        seen: list[ExpiredItem] = []
        assert provider.purge_expired(on_expired=seen.append) == 10
        assert {item.session_key for item in seen} == set(short)
        assert all(item.data == PAYLOAD for item in seen)


@contextmanager
def sentinel(tmp_path: Path, primary: RedisServer) -> Iterator[tuple[redis.Redis, str]]:
    """Run one Sentinel (quorum 1) watching ``primary``; yield its client and service name.

    It declares the primary down after 500 ms, so that a failover takes seconds, not the
    default 30 s. The service name is new each time: django-redis keeps one pool per URL for
    the whole process, and ``redis://<service>/0`` would otherwise reach an earlier test's
    (dead) Sentinel.
    """
    port = free_port()
    name = f"statemodes{port}"
    conf_file = tmp_path / "sentinel.conf"  # Sentinel rewrites it: a private, writable copy
    conf_file.write_text(
        f"port {port}\nbind 127.0.0.1\n"
        f"sentinel monitor {name} 127.0.0.1 {primary.port} 1\n"
        f"sentinel down-after-milliseconds {name} 500\n"
        f"sentinel failover-timeout {name} 10000\n"
    )
    process = subprocess.Popen(
        ["redis-server", str(conf_file), "--sentinel"], stdout=subprocess.DEVNULL
    )
    try:
        client = redis.Redis(port=port)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(answers, "sentinel did not start", timeout=10)
        yield client, name
    finally:
        process.kill()
        process.wait(timeout=10)


def sentinel_cache(client: redis.Redis, name: str) -> dict[str, Any]:
    port = client.connection_pool.connection_kwargs["port"]
    return cache(
        f"redis://{name}/0",
        CLIENT_CLASS="django_redis.client.SentinelClient",
        CONNECTION_FACTORY="django_redis.pool.SentinelConnectionFactory",
        SENTINELS=[("127.0.0.1", port)],
        SOCKET_CONNECT_TIMEOUT=0.5,
        SOCKET_TIMEOUT=2,
    )


def test_through_sentinel_the_provider_finds_the_primary(settings: Any, tmp_path: Path) -> None:
    primary = RedisServer()
    with running(primary), sentinel(tmp_path, primary) as (watcher, name):
        provider = use_cache(settings, sentinel_cache(watcher, name))
        key = new_key()
        lock_and_write(provider, key)
        assert redis.Redis(port=primary.port).exists(item_key(key))


def test_after_a_sentinel_failover_the_provider_works_on_the_promoted_replica(
    settings: Any, tmp_path: Path
) -> None:
    primary = RedisServer()
    replica = RedisServer("--replicaof", "127.0.0.1", str(primary.port))
    with running(primary, replica), sentinel(tmp_path, primary) as (watcher, name):
        to_replica = replica_of(replica, primary)
        wait_for(
            lambda: command(watcher, "SENTINEL", "REPLICAS", name),
            "sentinel never found the replica",
        )
        provider = use_cache(settings, sentinel_cache(watcher, name))
        # And a site in Custom mode on the same alias, for what users see: 503s, then service.
        settings.SESSION_ENGINE = "django_statemodes.backends.custom"
        settings.STATEMODES_CUSTOM_PROVIDER = "django_statemodes.providers.redis.RedisProvider"
        settings.STATEMODES_REDIS_ALIAS = "topology"
        site = Client()
        response = site.get("/increment/")
        assert response.status_code == 200 and response.json() == {"counter": 1}
        key = new_key()
        lock_and_write(provider, key)
        assert command(redis.Redis(port=primary.port), "WAIT", 1, 5000) == 1
        primary.kill()
        # Until Sentinel promotes the replica (connection refused by the old primary, or
        # READONLY from the replica): SessionStoreUnavailable, which the middleware turns
        # into a 503 with Retry-After.
        with pytest.raises(SessionStoreUnavailable):
            provider.get(key)
        response = site.get("/increment/")
        assert response.status_code == 503 and response["Retry-After"] == "5"

        def recovered() -> bool:
            try:
                provider.get(key)
            except SessionStoreUnavailable:
                return False
            return True

        wait_for(recovered, "the provider never reached the promoted replica", timeout=30)
        assert command(to_replica, "ROLE")[0] == b"master"
        # Sessions written before the failover survived it, on the promoted replica.
        item = provider.get(key)
        assert item is not None and item.data == WRITTEN and not item.locked
        response = site.get("/increment/")
        assert response.status_code == 200 and response.json() == {"counter": 2}
        other = new_key()
        lock_and_write(provider, other)
        assert to_replica.exists(item_key(other))


def test_a_lock_whose_release_failed_in_a_sentinel_failover_is_freed_after_the_promotion(
    settings: Any, tmp_path: Path
) -> None:
    """The lock reached the replica, the primary died, the release failed (503): the provider's
    releaser ends the lock on the promoted replica instead of leaving it for the lock timeout."""
    lock_timeout = 600.0  # what a session stuck behind the lost release would wait
    settings.STATEMODES_LOCK_TIMEOUT = lock_timeout
    primary = RedisServer()
    replica = RedisServer("--replicaof", "127.0.0.1", str(primary.port))
    with running(primary, replica), sentinel(tmp_path, primary) as (watcher, name):
        to_replica = replica_of(replica, primary)
        wait_for(
            lambda: command(watcher, "SENTINEL", "REPLICAS", name),
            "sentinel never found the replica",
        )
        provider = use_cache(settings, sentinel_cache(watcher, name))
        try:
            key = new_key()
            assert provider.set_and_release(key, PAYLOAD, lock_id=None, timeout=60, new_item=True)
            held = provider.get_exclusive(key)
            assert held is not None and not held.locked
            assert command(redis.Redis(port=primary.port), "WAIT", 1, 5000) == 1
            primary.kill()
            with pytest.raises(SessionStoreUnavailable):
                provider.release(key, held.lock_id)
            wait_for(lambda: command(to_replica, "ROLE")[0] == b"master", "no promotion", 30)
            promoted = time.monotonic()

            def unlocked() -> bool:
                try:
                    item = provider.get(key)
                except SessionStoreUnavailable:
                    return False
                return item is not None and not item.locked

            # A hundredth of the lock timeout: nothing waited for it.
            wait_for(unlocked, "the lock stayed on the promoted replica", lock_timeout / 100)
            assert time.monotonic() - promoted < lock_timeout / 100
            assert provider._releaser.released >= 1
            # The session is usable at once by a new request.
            again = provider.get_exclusive(key)
            assert again is not None and not again.locked and again.lock_id > held.lock_id
        finally:
            provider.close()
