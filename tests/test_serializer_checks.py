"""The security checks of issue 14: a pickle-based ``SESSION_SERIALIZER`` (E060, E061) and the
Redis provider on a cache alias the site also uses as a cache (W060).
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from django_statemodes.checks import check_settings

ENGINES = "django_statemodes.backends."
REDIS_PROVIDER = "django_statemodes.providers.redis.RedisProvider"


class PickleSerializer:
    """What Django's removed ``django.contrib.sessions.serializers.PickleSerializer`` did."""

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)  # noqa: S301  # the very risk the check reports


class FastSerializer:
    """Pickle under an innocent name: found by the names its ``loads`` uses."""

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)  # noqa: S301


class SubclassedSerializer(PickleSerializer):
    """Found through its base class."""


class SafeSerializer:
    def dumps(self, obj: Any) -> bytes:
        return repr(obj).encode()

    def loads(self, data: bytes) -> Any:
        return {}


def ids() -> list[str]:
    return [message.id for message in check_settings() if message.id]


PICKLES = [f"{__name__}.{name}" for name in ("PickleSerializer", "FastSerializer")]


@pytest.mark.parametrize("serializer", [*PICKLES, f"{__name__}.SubclassedSerializer"])
@pytest.mark.parametrize("engine", ["stateserver", "sql", "custom"])
def test_e060_a_pickle_serializer_is_an_error(serializer: str, engine: str) -> None:
    with override_settings(SESSION_ENGINE=ENGINES + engine, SESSION_SERIALIZER=serializer):
        messages = [m for m in check_settings() if m.id == "django_statemodes.E060"]
    assert len(messages) == 1
    assert "code" in messages[0].msg and "STATEMODES_ALLOW_PICKLE_SERIALIZER" in str(
        messages[0].hint
    )


@pytest.mark.parametrize("serializer", PICKLES)
def test_e060_is_silenced_by_acknowledging_the_risk(serializer: str) -> None:
    with override_settings(
        SESSION_ENGINE=ENGINES + "stateserver",
        SESSION_SERIALIZER=serializer,
        STATEMODES_ALLOW_PICKLE_SERIALIZER=True,
    ):
        assert "django_statemodes.E060" not in ids()


@pytest.mark.parametrize(
    "serializer",
    [
        "django.core.signing.JSONSerializer",
        "django.contrib.sessions.serializers.JSONSerializer",
        f"{__name__}.SafeSerializer",
    ],
)
def test_e060_leaves_other_serializers_alone(serializer: str) -> None:
    with override_settings(SESSION_ENGINE=ENGINES + "stateserver", SESSION_SERIALIZER=serializer):
        assert "django_statemodes.E060" not in ids()


@pytest.mark.parametrize("engine", ["inproc", "off"])
def test_e060_not_for_engines_that_serialize_nothing(engine: str) -> None:
    with override_settings(SESSION_ENGINE=ENGINES + engine, SESSION_SERIALIZER=PICKLES[0]):
        assert "django_statemodes.E060" not in ids()


def test_e060_is_registered_with_manage_py_check() -> None:
    with override_settings(SESSION_ENGINE=ENGINES + "stateserver", SESSION_SERIALIZER=PICKLES[0]):
        # databases=[]: Django 6.1 would open every alias for its model checks.
        assert [m.id for m in run_checks(databases=[])].count("django_statemodes.E060") == 1


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_e061_the_acknowledgement_must_be_a_bool(value: object) -> None:
    with override_settings(STATEMODES_ALLOW_PICKLE_SERIALIZER=value):
        assert "django_statemodes.E061" in ids()


# W060: django-redis's and Django's cache.clear() run FLUSHDB, so a cache sharing the Redis
# database with the sessions wipes them all.


def redis_cache(location: str) -> dict[str, Any]:
    return {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": location}


CACHES = {
    "default": redis_cache("redis://127.0.0.1:6379/0"),
    "sessions": redis_cache("redis://127.0.0.1:6379/1"),
    "pages": redis_cache("redis://127.0.0.1:6379/2"),
}


def redis_ids(caches: dict[str, Any], **overrides: Any) -> list[str]:
    with override_settings(
        SESSION_ENGINE=ENGINES + "custom",
        STATEMODES_CUSTOM_PROVIDER=REDIS_PROVIDER,
        CACHES=caches,
        **overrides,
    ):
        return ids()


@pytest.mark.parametrize(
    "overrides",
    [
        {"STATEMODES_REDIS_ALIAS": "default"},
        {"STATEMODES_CUSTOM_PROVIDER_OPTIONS": {"cache_alias": "default"}},
        {"STATEMODES_REDIS_ALIAS": "pages", "CACHE_MIDDLEWARE_ALIAS": "pages"},
        {"STATEMODES_REDIS_ALIAS": "pages", "SESSION_CACHE_ALIAS": "pages"},
    ],
)
def test_w060_the_redis_provider_on_an_alias_the_site_uses_as_a_cache(
    overrides: dict[str, Any],
) -> None:
    assert "django_statemodes.W060" in redis_ids(CACHES, **overrides)


def test_w060_another_cache_on_the_same_redis_database() -> None:
    caches = {**CACHES, "other": redis_cache("redis://127.0.0.1:6379/1")}
    assert "django_statemodes.W060" in redis_ids(caches, STATEMODES_REDIS_ALIAS="sessions")
    same_db = {**CACHES, "other": redis_cache("redis://127.0.0.1:6379?db=1")}
    assert "django_statemodes.W060" in redis_ids(same_db, STATEMODES_REDIS_ALIAS="sessions")


@pytest.mark.parametrize(
    "overrides",
    [
        {"STATEMODES_REDIS_ALIAS": "sessions"},
        {"STATEMODES_CUSTOM_PROVIDER_OPTIONS": {"cache_alias": "sessions"}},
    ],
)
def test_w060_not_with_a_dedicated_alias(overrides: dict[str, Any]) -> None:
    assert "django_statemodes.W060" not in redis_ids(CACHES, **overrides)
