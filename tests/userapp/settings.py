"""Settings for serving the sessions-by-user site from gunicorn; the engine from the environment.

STATEMODES_TEST_ENGINE: inproc, sql (PostgreSQL, database STATEMODES_PG_NAME), stateserver
(STATEMODES_STATE_CONNECTION), redis (STATEMODES_TEST_REDIS_URL) or redis-cluster
(STATEMODES_TEST_REDIS_CLUSTER, comma-separated node URLs); STATEMODES_TEST_SQLITE is
the users' database file.
"""

import os

from tests.settings import *  # noqa: F403

DATABASES["default"] = {  # noqa: F405
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": os.environ.get("STATEMODES_TEST_SQLITE", ":memory:"),
}
INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "sessions_tests"]  # noqa: F405
INSTALLED_APPS.append("tests.userapp")
ROOT_URLCONF = "tests.userapp.urls"
LOGIN_URL = "/login/"
STATEMODES_USER_INDEX = True
STATEMODES_USER_INDEX_IP = "full"
STATEMODES_SIGN_OUT_EVERYWHERE_ON_PASSWORD_CHANGE = True
STATEMODES_APPLICATION_NAME = os.environ.get("STATEMODES_APPLICATION_NAME", "default")

ENGINE = os.environ.get("STATEMODES_TEST_ENGINE", "inproc")
if ENGINE == "inproc":
    SESSION_ENGINE = "django_statemodes.backends.inproc"
elif ENGINE == "sql":
    SESSION_ENGINE = "django_statemodes.backends.sql"
    STATEMODES_SQL_DATABASE = "pg"
elif ENGINE == "stateserver":
    SESSION_ENGINE = "django_statemodes.backends.stateserver"
    STATEMODES_STATE_CONNECTION = os.environ["STATEMODES_STATE_CONNECTION"]
elif ENGINE in ("redis", "redis-cluster"):
    SESSION_ENGINE = "django_statemodes.backends.custom"
    STATEMODES_CUSTOM_PROVIDER = "django_statemodes.providers.redis.RedisProvider"
    STATEMODES_REDIS_ALIAS = "statemodes-redis"
    redis_cache: dict[str, object] = {"BACKEND": "django_redis.cache.RedisCache"}
    if ENGINE == "redis":
        redis_cache["LOCATION"] = os.environ["STATEMODES_TEST_REDIS_URL"]
    else:
        redis_cache["LOCATION"] = os.environ["STATEMODES_TEST_REDIS_CLUSTER"].split(",")
        redis_cache["OPTIONS"] = {"CLUSTER": True, "SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 5}
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "statemodes-redis": redis_cache,
    }
else:
    raise ValueError(f"unknown STATEMODES_TEST_ENGINE {ENGINE!r}")
