"""The Redis provider's index of sessions by user, on a private redis-server of this module.

What the shared contract cannot show: the per-user set and how it is kept clean (removal,
expiry, purge, a reused key), its TTL, the cost of a listing counted in Redis's own command
statistics (a private server: nobody else's commands are counted), and hostile input. The
cluster's cases are in tests/test_redis_cluster.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from django_statemodes.providers.redis import RedisProvider
from django_statemodes.testing import new_key
from tests.redis_servers import RedisServer, running

pytestmark = [pytest.mark.redis]

ALIAS = "statemodes-index"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with running(RedisServer()) as (started,):
        yield started


@pytest.fixture
def provider(server: RedisServer, settings: Any) -> Iterator[RedisProvider]:
    settings.CACHES = {
        **settings.CACHES,
        ALIAS: {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": server.url},
    }
    provider = RedisProvider(cache_alias=ALIAS, end_grace=30)
    yield provider
    provider.close()


@pytest.fixture
def db(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port)


def wait_expired(db: redis.Redis, provider: RedisProvider, key: str) -> None:
    """Wait (bounded) until the item's expiry passed on Redis's clock, without touching it."""
    deadline = time.monotonic() + 10
    while True:
        ex = db.hget(provider._keys(key)[0], "ex")
        seconds, micros = db.time()
        if ex is None or int(ex) <= seconds * 1000 + micros // 1000:
            return
        assert time.monotonic() < deadline, "the item did not expire"
        time.sleep(0.1)


def insert(provider: RedisProvider, key: str, timeout: int = 600) -> None:
    assert provider.set_and_release(key, b"payload", lock_id=None, timeout=timeout, new_item=True)


def members(db: redis.Redis, provider: RedisProvider, user: str) -> set[str]:
    found = db.smembers(provider._user_set(user))
    return {m.decode() if isinstance(m, bytes) else m for m in found}


def calls(db: redis.Redis, command: str) -> int:
    stats = db.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


def test_a_bound_session_is_a_member_of_its_users_set_with_fields_in_its_hash(
    provider: RedisProvider, db: redis.Redis
) -> None:
    user, key = new_key(), new_key()
    insert(provider, key, timeout=600)
    assert provider.bind_user(key, user, ip="192.0.2.0", user_agent="UA")
    assert members(db, provider, user) == {key}
    fields = db.hgetall(provider._keys(key)[0])
    assert fields[b"u"] == user.encode() and fields[b"ip"] == b"192.0.2.0"
    assert fields[b"ua"] == b"UA" and int(fields[b"c"]) == int(fields[b"ls"])
    # The set lives as long as its longest session (timeout + end_grace), never forever.
    ttl = db.pttl(provider._user_set(user))
    assert 600_000 < ttl <= (600 + 30) * 1000
    provider.remove(key)


def test_remove_takes_the_member_out_in_the_same_script(
    provider: RedisProvider, db: redis.Redis
) -> None:
    user, key = new_key(), new_key()
    insert(provider, key)
    provider.bind_user(key, user, ip=None, user_agent=None)
    evalsha, srem = calls(db, "evalsha"), calls(db, "srem")
    assert provider.remove(key)
    assert members(db, provider, user) == set()
    # One round trip: the REMOVE script, whose SREM is the only one.
    assert (calls(db, "evalsha") - evalsha, calls(db, "srem") - srem) == (1, 1)


def test_an_expired_session_is_pruned_by_the_listing_and_by_the_purge(
    provider: RedisProvider, db: redis.Redis
) -> None:
    user = new_key()
    short, purged, kept = new_key(), new_key(), new_key()
    insert(provider, short, timeout=1)
    insert(provider, purged, timeout=1)
    insert(provider, kept)
    for key in (short, purged, kept):
        provider.bind_user(key, user, ip=None, user_agent=None)
    wait_expired(db, provider, short)
    wait_expired(db, provider, purged)
    # The purge drops an expired item and its member; the listing prunes what is left.
    reported: list[str] = []
    provider.purge_expired(on_expired=lambda item: reported.append(item.session_key))
    assert {short, purged} <= set(reported)
    assert members(db, provider, user) == {kept}
    insert(provider, short, timeout=1)
    provider.bind_user(short, user, ip=None, user_agent=None)
    wait_expired(db, provider, short)
    assert [i.session_key for i in provider.user_sessions(user)] == [kept]
    assert members(db, provider, user) == {kept}  # pruned by the listing
    provider.remove(kept)
    provider.remove(short)


def test_a_reused_key_is_never_listed_for_its_former_user(
    provider: RedisProvider, db: redis.Redis
) -> None:
    former, key = new_key(), new_key()
    insert(provider, key, timeout=1)
    provider.bind_user(key, former, ip=None, user_agent=None)
    wait_expired(db, provider, key)
    insert(provider, key)  # a new item over the expired one: its hash starts afresh
    assert provider.user_sessions(former) == []
    assert members(db, provider, former) == set()
    provider.remove(key)


def test_listing_reads_only_the_users_sessions_however_many_are_stored(
    provider: RedisProvider, db: redis.Redis
) -> None:
    user = new_key()
    mine = [new_key() for _ in range(5)]
    others = [new_key() for _ in range(2000)]
    pipe = db.pipeline(transaction=False)
    for key in others:  # unbound sessions of the same namespace
        pipe.hset(provider._keys(key)[0], mapping={"ex": 2**52, "to": 600, "d": b"x"})
    pipe.execute()
    try:
        for key in mine:
            insert(provider, key)
            provider.bind_user(key, user, ip=None, user_agent="UA")
        hmget, smembers, scan = calls(db, "hmget"), calls(db, "smembers"), calls(db, "scan")
        assert {i.session_key for i in provider.user_sessions(user)} == set(mine)
        assert calls(db, "hmget") - hmget == len(mine)
        assert calls(db, "smembers") - smembers == 1
        assert calls(db, "scan") == scan
    finally:
        db.delete(*(provider._keys(key)[0] for key in others))
        for key in mine:
            provider.remove(key)


def test_the_admin_listing_pages_through_the_expiry_set(provider: RedisProvider) -> None:
    keys = [new_key() for _ in range(7)]
    for key in keys:
        insert(provider, key)
    try:
        _, total = provider.list_sessions(limit=0)
        seen: list[str] = []
        for offset in range(0, total, 3):
            page, again = provider.list_sessions(offset=offset, limit=3)
            assert len(page) <= 3 and again >= len(keys)
            seen += [i.session_key for i in page]
        assert set(keys) <= set(seen)
        assert len(seen) == len(set(seen))  # pages do not overlap
    finally:
        for key in keys:
            provider.remove(key)


def test_hostile_user_ids_and_client_strings(provider: RedisProvider, db: redis.Redis) -> None:
    key = new_key()
    insert(provider, key)
    with pytest.raises(ValueError, match="255 bytes"):
        provider.bind_user(key, "x" * 256, ip=None, user_agent=None)
    with pytest.raises(ValueError, match="non-empty"):
        provider.user_sessions("")
    user = "}{ü" * 40  # braces and UTF-8: any string names one set
    assert provider.bind_user(key, user, ip="9" * 500, user_agent="U" * 100_000)
    (info,) = provider.user_sessions(user)
    assert info.ip is not None and len(info.ip) == 45
    assert info.user_agent is not None and len(info.user_agent) == 512
    provider.remove(key)
    assert members(db, provider, user) == set()


def test_the_async_twins_use_redis_asyncio(provider: RedisProvider, db: redis.Redis) -> None:
    user, key = new_key(), new_key()
    insert(provider, key)

    async def scenario() -> None:
        assert await provider.abind_user(key, user, ip="192.0.2.0", user_agent="UA")
        (info,) = await provider.auser_sessions(user)
        assert info.ip == "192.0.2.0"
        page, total = await provider.alist_sessions(limit=5)
        assert len(page) <= 5 and total >= 1
        assert await provider.aremove(key)
        assert await provider.auser_sessions(user) == []

    asyncio.run(scenario())
    assert provider._executor is None  # no thread ran a blocking call for the async twins
    assert members(db, provider, user) == set()


def test_a_shard_client_keeps_each_users_set_beside_its_sessions(settings: Any) -> None:
    one, two = RedisServer(), RedisServer()
    with running(one, two):
        settings.CACHES = {
            **settings.CACHES,
            ALIAS: {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": [one.url, two.url],
                "OPTIONS": {"CLIENT_CLASS": "django_redis.client.ShardClient"},
            },
        }
        provider = RedisProvider(cache_alias=ALIAS)
        try:
            user = new_key()
            keys = [new_key() for _ in range(20)]
            for key in keys:
                insert(provider, key)
                assert provider.bind_user(key, user, ip=None, user_agent=None)
            shards = [redis.Redis(port=s.port) for s in (one, two)]
            sizes = [shard.scard(provider._user_set(user)) for shard in shards]
            assert sum(sizes) == len(keys) and min(sizes) > 0  # a set on each shard
            assert {i.session_key for i in provider.user_sessions(user)} == set(keys)
            _, total = provider.list_sessions()
            assert total == len(keys)
            for key in keys:
                assert provider.remove(key)
            assert [shard.exists(provider._user_set(user)) for shard in shards] == [0, 0]
        finally:
            provider.close()
