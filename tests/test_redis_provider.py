"""RedisProvider through the conformance kit, Django's own session tests and Custom mode.

Uses db 15 of the Redis at 127.0.0.1:6379 (the ``statemodes-redis`` alias of tests/settings.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from django_statemodes.backends.custom import SessionStore
from django_statemodes.providers.redis import RedisProvider
from django_statemodes.testing import EngineContract, ProviderContract
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
