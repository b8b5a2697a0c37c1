"""Checks of the Redis provider's options in Custom mode: E040, E041."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error

from django_statemodes.conf import conf

REDIS_PROVIDER = "django_statemodes.providers.redis.RedisProvider"


def is_redis_provider(provider: type) -> bool:
    """Return True for RedisProvider and its subclasses."""
    # By name: importing providers/redis.py here would need redis installed in every mode.
    return any(f"{cls.__module__}.{cls.__qualname__}" == REDIS_PROVIDER for cls in provider.__mro__)


def check_redis_provider(options: dict[str, Any]) -> list[CheckMessage]:
    """Check that the provider's cache alias is a django-redis cache."""
    alias = options.get("cache_alias") or conf.STATEMODES_REDIS_ALIAS
    caches_setting: dict[str, Any] = settings.CACHES
    if alias not in caches_setting:
        return [
            Error(
                f"The Redis provider's cache alias {alias!r} is not in CACHES.",
                hint="Add a django-redis cache under that alias, or set "
                "STATEMODES_REDIS_ALIAS (or the provider's cache_alias option) to one.",
                id="django_statemodes.E040",
            )
        ]
    backend = caches_setting[alias].get("BACKEND", "")
    if not isinstance(backend, str) or not backend.startswith("django_redis."):
        return [
            Error(
                f"The Redis provider's cache {alias!r} uses {backend!r}, not django-redis.",
                hint="Use BACKEND 'django_redis.cache.RedisCache' for that alias.",
                id="django_statemodes.E041",
            )
        ]
    return []
