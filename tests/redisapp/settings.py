"""A real server for the Redis provider's tests: RedisProvider, or Django's cache engine on
django-redis as the control, chosen by the environment."""

import os

from tests.settings import *  # noqa: F403

REDIS_URL = os.environ.get("STATEMODES_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "statemodes-redis": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 5},
    },
}
if os.environ.get("STATEMODES_TEST_REDIS_CLUSTER"):
    # Redis Cluster: some of its nodes (comma-separated URLs), for tests/test_redis_cluster.py.
    CACHES["statemodes-redis"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": os.environ["STATEMODES_TEST_REDIS_CLUSTER"].split(","),
        "OPTIONS": {"CLUSTER": True, "SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 5},
    }
if os.environ.get("STATEMODES_TEST_LOCK_TIMEOUT"):
    STATEMODES_LOCK_TIMEOUT = float(os.environ["STATEMODES_TEST_LOCK_TIMEOUT"])
if os.environ.get("STATEMODES_TEST_ENGINE") == "django-cache":
    # The control: Django's own cache engine on the same Redis, with Django's middleware.
    SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    SESSION_CACHE_ALIAS = "statemodes-redis"
    MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
else:
    SESSION_ENGINE = "django_statemodes.backends.custom"
    STATEMODES_CUSTOM_PROVIDER = "django_statemodes.providers.redis.RedisProvider"
    STATEMODES_REDIS_ALIAS = "statemodes-redis"
    MIDDLEWARE = ["django_statemodes.middleware.SessionStateMiddleware"]
# Outermost, so that every response names its worker process, the 503s included.
MIDDLEWARE = ["tests.redisapp.middleware.worker_pid", *MIDDLEWARE]
