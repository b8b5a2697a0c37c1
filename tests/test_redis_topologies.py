"""RedisProvider over django-redis's other topologies, each on private redis-server processes:
a primary with a replica, a ShardClient over two servers, and Sentinel."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from django_statemodes.providers.base import ExpiredItem
from django_statemodes.providers.redis import RedisProvider
from django_statemodes.testing import new_key
from tests.conftest import free_port
from tests.redis_servers import RedisServer, running

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PAYLOAD = b"\x00{}"


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
    assert provider.set_and_release(key, b"\x00{1}", lock_id=held.lock_id, timeout=60)
    item = provider.get(key)
    assert item is not None and item.data == b"\x00{1}" and not item.locked


def test_with_a_replica_every_call_goes_to_the_primary(settings: Any) -> None:
    primary = RedisServer()
    with running(primary):
        replica = RedisServer("--replicaof", "127.0.0.1", str(primary.port))
        with running(replica):
            provider = use_cache(settings, cache([primary.url, replica.url]))
            keys = [new_key() for _ in range(20)]
            for key in keys:  # a replica would refuse these writes (READONLY)
                lock_and_write(provider, key)
            assert redis.Redis(port=primary.port).exists(f"statemodes:default:s:{{{keys[0]}}}")


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


def test_through_sentinel_the_provider_finds_the_primary(settings: Any, tmp_path: Path) -> None:
    primary = RedisServer()
    with running(primary):
        port = free_port()
        conf_file = tmp_path / "sentinel.conf"
        conf_file.write_text(
            f"port {port}\nbind 127.0.0.1\nsentinel monitor statemodes 127.0.0.1 {primary.port} 1\n"
        )
        sentinel = subprocess.Popen(
            ["redis-server", str(conf_file), "--sentinel"], stdout=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis(port=port).ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "sentinel did not start"
                    time.sleep(0.05)
            config = cache(
                "redis://statemodes/0",
                CLIENT_CLASS="django_redis.client.SentinelClient",
                CONNECTION_FACTORY="django_redis.pool.SentinelConnectionFactory",
                SENTINELS=[("127.0.0.1", port)],
            )
            provider = use_cache(settings, config)
            key = new_key()
            lock_and_write(provider, key)
            assert redis.Redis(port=primary.port).exists(f"statemodes:default:s:{{{key}}}")
        finally:
            sentinel.kill()
            sentinel.wait(timeout=10)
