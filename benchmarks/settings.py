"""Settings for the benchmarks: every store the harness compares, in one process.

SQLite in a temporary file (shared with gunicorn workers through the environment), PostgreSQL
under the ``pg`` alias, LocMemCache and django-redis. Which engine runs is switched by
``benchmarks.engines`` while the harness runs, never by editing this module.
"""

from __future__ import annotations

import os
import tempfile

SECRET_KEY = "benchmarks-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "benchmarks.app.urls"

# One file for every process of a run (gunicorn workers inherit the environment).
SQLITE_PATH = os.environ.setdefault(
    "STATEMODES_BENCH_SQLITE", os.path.join(tempfile.gettempdir(), "statemodes-bench.sqlite3")
)
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": SQLITE_PATH,
        # Persistent connections for every engine alike: a benchmark of sessions, not of
        # connection setup.
        "CONN_MAX_AGE": None,
        # WAL, as docs/sql.md recommends for SQL mode (and as Django's own docs suggest for
        # concurrent SQLite sites): the same file and options for our engine and Django's db.
        "OPTIONS": {
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        },
    },
    "pg": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("STATEMODES_BENCH_PG_NAME", "test"),
        "USER": "root",
        "HOST": "127.0.0.1",
        # The round-trip count puts a counting proxy in front of PostgreSQL and Redis.
        "PORT": os.environ.get("STATEMODES_BENCH_PG_PORT", "5432"),
        "CONN_MAX_AGE": None,
    },
}
DATABASE_ROUTERS = ["benchmarks.routers.SessionRouter"]
# Where Django's db engine keeps django_session; the harness switches it per engine.
STATEMODES_BENCH_SESSION_DB = "default"

REDIS_URL = f"redis://127.0.0.1:{os.environ.get('STATEMODES_BENCH_REDIS_PORT', '6379')}/14"
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # benchmarks.session_bytes: LocMemCache holding every session it is given (no culling).
    "locmem-large": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "bench-large",
        "OPTIONS": {"MAX_ENTRIES": 10**8},
    },
    "redis": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
    },
}

INSTALLED_APPS = ["django.contrib.sessions", "django_statemodes"]
MIDDLEWARE = ["django_statemodes.middleware.SessionStateMiddleware"]
SESSION_ENGINE = "django_statemodes.backends.inproc"
# benchmarks.cycle --serializer: the same for our engines, Django's db engine and the floors.
SESSION_SERIALIZER = os.environ.get(
    "STATEMODES_BENCH_SERIALIZER", "django.contrib.sessions.serializers.JSONSerializer"
)
TEMPLATES: list[dict[str, object]] = []
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
