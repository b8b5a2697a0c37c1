"""RedisProvider through the conformance kit, Django's own session tests and Custom mode.

Uses db 15 of the Redis at 127.0.0.1:6379 (the ``statemodes-redis`` alias of tests/settings.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import override_settings

from django_statemodes.backends.custom import SessionStore
from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.providers.base import ExpiredItem
from django_statemodes.providers.redis import RedisProvider
from django_statemodes.signals import session_end
from django_statemodes.testing import EngineContract, ProviderContract, new_key
from tests.django_suite import make_django_suite

ALIAS = "statemodes-redis"
PROVIDER = "django_statemodes.providers.redis.RedisProvider"
REDIS_SETTINGS = {"STATEMODES_CUSTOM_PROVIDER": PROVIDER, "STATEMODES_REDIS_ALIAS": ALIAS}

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("redis_server")]


class TestRedisProvider(ProviderContract):
    @pytest.fixture
    def provider(self) -> Iterator[RedisProvider]:
        provider = RedisProvider(cache_alias=ALIAS)
        yield provider
        provider.close()


class TestRedisEngine(EngineContract):
    @pytest.fixture
    def engine(self, settings: Any) -> type[SessionStore]:
        settings.SESSION_ENGINE = "django_statemodes.backends.custom"
        settings.STATEMODES_CUSTOM_PROVIDER = PROVIDER
        settings.STATEMODES_REDIS_ALIAS = ALIAS
        return SessionStore


def _with_redis(cls: type) -> Any:
    return pytest.mark.usefixtures("redis_server")(override_settings(**REDIS_SETTINGS)(cls))


# Django's own session tests through Custom mode + RedisProvider (classes renamed: Redis).
DjangoRedisSessionTests, DjangoRedisMiddlewareTests = (
    _with_redis(type(f"DjangoRedis{cls.__name__[len('DjangoCustom') :]}", (cls,), {}))
    for cls in make_django_suite("django_statemodes.backends.custom", SessionStore)
)


# Redis specifics: keys, TTLs, the expiry set, errors.


@pytest.fixture
def provider() -> Iterator[RedisProvider]:
    provider = RedisProvider(cache_alias=ALIAS, end_grace=30)
    yield provider
    provider.close()


def raw(provider: RedisProvider) -> Any:
    from django_redis import get_redis_connection

    return get_redis_connection(ALIAS)


def test_items_live_in_the_application_namespace_with_a_ttl_past_their_timeout(
    provider: RedisProvider, settings: Any
) -> None:
    key = new_key()
    assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    item_key = f"statemodes:default:s:{{{key}}}"
    redis = raw(provider)
    try:
        # Redis frees an expired session itself after timeout + end_grace, purged or not.
        assert 60_000 < redis.pttl(item_key) <= 90_000
        assert redis.zscore("statemodes:default:expiry", key) is not None
        assert provider.create_uninitialized(new_key(), 60) is True
        settings.STATEMODES_APPLICATION_NAME = "othersite"
        other = RedisProvider(cache_alias=ALIAS)
        assert other.get(key) is None  # another application never sees this one's sessions
    finally:
        provider.remove(key)
    assert redis.exists(item_key) == 0
    assert redis.zscore("statemodes:default:expiry", key) is None


def test_a_purge_after_redis_dropped_the_data_still_reports_the_session(
    provider: RedisProvider,
) -> None:
    key = new_key()
    assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=1, new_item=True)
    raw(provider).delete(f"statemodes:default:s:{{{key}}}")  # what Redis's own TTL does
    time.sleep(1.2)
    seen: list[ExpiredItem] = []
    provider.purge_expired(on_expired=seen.append)
    assert ExpiredItem(key, None) in seen


def test_purge_works_in_batches(provider: RedisProvider) -> None:
    keys = [new_key() for _ in range(7)]
    for key in keys:
        assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=1, new_item=True)
    time.sleep(1.2)
    seen: list[ExpiredItem] = []
    assert provider.purge_expired(on_expired=seen.append, batch_size=2) >= 7
    assert set(keys) <= {item.session_key for item in seen}
    assert provider.purge_expired(dry_run=True) == 0


def test_a_cache_that_is_not_django_redis_is_a_clear_error(settings: Any) -> None:
    provider = RedisProvider(cache_alias="default")  # LocMemCache in tests/settings.py
    with pytest.raises(ImproperlyConfigured, match="needs django-redis"):
        provider.get(new_key())
    missing = RedisProvider(cache_alias="nope")
    with pytest.raises(ImproperlyConfigured, match="'nope', which is not an alias in CACHES"):
        missing.get(new_key())


def test_an_unreachable_redis_raises_session_store_unavailable(settings: Any) -> None:
    from tests.conftest import free_port

    settings.CACHES = {
        **settings.CACHES,
        "down": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5},
        },
    }
    provider = RedisProvider(cache_alias="down")
    with pytest.raises(SessionStoreUnavailable, match="cache alias 'down'") as caught:
        provider.get_exclusive(new_key())
    assert caught.value.setting == "STATEMODES_REDIS_ALIAS"


def check_ids() -> list[str]:
    from django_statemodes.checks import check_settings

    return [message.id for message in check_settings(None) if message.id]


def test_checks_accept_a_django_redis_alias(settings: Any) -> None:
    settings.SESSION_ENGINE = "django_statemodes.backends.custom"
    settings.STATEMODES_CUSTOM_PROVIDER = PROVIDER
    settings.STATEMODES_REDIS_ALIAS = ALIAS
    assert not [i for i in check_ids() if i.startswith("django_statemodes.E04")]


def test_check_e040_reports_an_alias_missing_from_caches(settings: Any) -> None:
    settings.SESSION_ENGINE = "django_statemodes.backends.custom"
    settings.STATEMODES_CUSTOM_PROVIDER = PROVIDER
    settings.STATEMODES_CUSTOM_PROVIDER_OPTIONS = {"cache_alias": "sessions"}
    assert "django_statemodes.E040" in check_ids()


def test_check_e041_reports_an_alias_that_is_not_django_redis(settings: Any) -> None:
    settings.SESSION_ENGINE = "django_statemodes.backends.custom"
    settings.STATEMODES_CUSTOM_PROVIDER = PROVIDER
    settings.STATEMODES_REDIS_ALIAS = "default"  # LocMemCache
    assert "django_statemodes.E041" in check_ids()


# Waiting: BLPOP on a wake-up list, never polling.


@override_settings(SESSION_ENGINE="django_statemodes.backends.custom", **REDIS_SETTINGS)
def test_purge_sessions_sends_session_end_with_the_data_of_expired_redis_sessions() -> None:
    expiring = SessionStore()
    expiring["name"] = "gone"
    expiring.set_expiry(1)
    expiring.save()
    live = SessionStore()
    live["name"] = "live"
    live.save()
    assert expiring.session_key is not None and live.session_key is not None
    time.sleep(2.1)
    ended: list[tuple[str, Any, str]] = []

    def receiver(sender: Any, session_key: str, data: Any, reason: str, **kw: Any) -> None:
        ended.append((session_key, data, reason))

    session_end.connect(receiver)
    out = StringIO()
    try:
        call_command("purge_sessions", stdout=out)
    finally:
        session_end.disconnect(receiver)
        live.delete()
    ours = [(data, reason) for key, data, reason in ended if key == expiring.session_key]
    assert len(ours) == 1
    data, reason = ours[0]
    assert reason == "expired" and data is not None and data["name"] == "gone"
    assert live.session_key not in {key for key, _, _ in ended}
    # db 15 may hold other tests' expired sessions: at least ours was purged.
    count = int(out.getvalue().split("Purged ", 1)[1].split(" ", 1)[0])
    assert count >= 1 and count == len(ended)
    redis_client = raw(RedisProvider(cache_alias=ALIAS))
    assert not redis_client.exists(f"statemodes:default:s:{{{expiring.session_key}}}")
    assert redis_client.zscore("statemodes:default:expiry", expiring.session_key) is None


def test_replies_are_read_with_hiredis_exactly_where_the_extra_is_installed(
    provider: RedisProvider,
) -> None:
    # redis-py reads replies with hiredis when it is importable (the [hiredis] extra), on the
    # blocking and the asyncio path alike. One CI leg installs the extra and the others do not
    # (scripts/test.sh exports the leg's extras), so each parser runs the whole suite.
    import asyncio
    import importlib.util
    import os

    from redis._parsers import _AsyncHiredisParser, _HiredisParser

    installed = importlib.util.find_spec("hiredis") is not None
    extras = os.environ.get("STATEMODES_TEST_EXTRAS")
    if extras is not None:
        assert ("hiredis" in extras.split(",")) == installed, (extras, installed)
    key = new_key()
    assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    try:
        assert provider.get(key) is not None
        server = provider._server(f"statemodes:default:s:{{{key}}}")
        pool = server.client.connection_pool
        connection = pool.get_connection()  # the one get() just gave back
        pool.release(connection)
        assert issubclass(type(connection._parser), _HiredisParser) == installed

        async def async_parser() -> type:
            assert await provider.aget(key) is not None
            apool = provider._async_clients()[server.name].connection_pool
            connection = await apool.get_connection()
            await apool.release(connection)
            return type(connection._parser)

        assert issubclass(asyncio.run(async_parser()), _AsyncHiredisParser) == installed
    finally:
        provider.remove(key)
