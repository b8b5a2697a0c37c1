"""A user's project, one mode at a time: ``STATEMODES_RUNNER_MODE`` picks the session engine.

sqlite: SQL mode on a SQLite file (the runner tests on its in-memory database); postgresql: SQL
mode on PostgreSQL (``STATEMODES_RUNNER_PG_TEST_NAME`` names the test database); inproc; redis
(Custom mode, the Redis provider, ``STATEMODES_RUNNER_REDIS_URL``); stateserver
(``STATEMODES_STATE_CONNECTION``). No state table is installed by hand in any of them.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

MODE = os.environ.get("STATEMODES_RUNNER_MODE", "inproc")

SECRET_KEY = "runner-project-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "runner_urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_statemodes",
    "shop",
]
MIDDLEWARE = [
    "django_statemodes.middleware.SessionStateMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get(
            "STATEMODES_RUNNER_SQLITE", os.path.join(tempfile.gettempdir(), "runner.sqlite3")
        ),
    }
}
CACHES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

if MODE == "sqlite":
    SESSION_ENGINE = "django_statemodes.backends.sql"
elif MODE == "postgresql":
    SESSION_ENGINE = "django_statemodes.backends.sql"
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("STATEMODES_RUNNER_PG_NAME", "test"),
        "USER": os.environ.get("STATEMODES_RUNNER_PG_USER", "root"),
        "HOST": "127.0.0.1",
        "PORT": os.environ.get("STATEMODES_RUNNER_PG_PORT", "5432"),
        "TEST": {"NAME": os.environ.get("STATEMODES_RUNNER_PG_TEST_NAME", "test_runner")},
    }
elif MODE == "inproc":
    SESSION_ENGINE = "django_statemodes.backends.inproc"
elif MODE == "redis":
    SESSION_ENGINE = "django_statemodes.backends.custom"
    STATEMODES_CUSTOM_PROVIDER = "django_statemodes.providers.redis.RedisProvider"
    STATEMODES_REDIS_ALIAS = "sessions"
    CACHES["sessions"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": os.environ.get("STATEMODES_RUNNER_REDIS_URL", "redis://127.0.0.1:6379/15"),
    }
elif MODE == "stateserver":
    SESSION_ENGINE = "django_statemodes.backends.stateserver"
    STATEMODES_STATE_CONNECTION = os.environ["STATEMODES_STATE_CONNECTION"]
else:
    raise ValueError(f"STATEMODES_RUNNER_MODE {MODE!r} is not a mode of the runner project")

# Each run its own application: runs that share a Redis or a state server never see each
# other's sessions.
STATEMODES_APPLICATION_NAME = os.environ.get("STATEMODES_RUNNER_APPLICATION", "runner")
