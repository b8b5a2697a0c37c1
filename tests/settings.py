"""Settings for the test suite: SQLite by default, services at 127.0.0.1 when asked for."""

import os
from typing import Any

SECRET_KEY = "NOTASECRET"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "tests.urls"
DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("STATEMODES_TEST_SQLITE", ":memory:"),
    },
}
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_statemodes",
]
MIDDLEWARE = [
    "django_statemodes.middleware.SessionStateMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
SESSION_ENGINE = "django_statemodes.backends.inproc"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# Django's own session tests are fetched from its sdist by the tests that run them
# (tests/django_suite.py), never here: importing the settings downloads and runs nothing.

# The Redis provider's tests (tests/test_redis_*.py) use db 15 of the Redis at 127.0.0.1:6379;
# django-redis connects lazily, so nothing breaks when Redis is not running.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "statemodes-redis": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:6379/15",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 5},
    },
}

# SQL mode's PostgreSQL tests (tests/test_sql_*.py) use this alias; Django connects lazily, so
# nothing breaks when PostgreSQL is down. The test database name is per process, so runs of
# several checkouts on one server never drop each other's database.
DATABASES["pg"] = {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": os.environ.get("STATEMODES_PG_NAME", "test"),
    "USER": os.environ.get("STATEMODES_PG_USER", "root"),
    "HOST": "127.0.0.1",
    "PORT": os.environ.get("STATEMODES_PG_PORT", "5432"),
    "TEST": {"NAME": f"test_statemodes_{os.getpid()}"},
}

# SQL mode's MariaDB (or MySQL) tests: the same per-process test database as PostgreSQL's.
DATABASES["mariadb"] = {
    "ENGINE": "django.db.backends.mysql",
    "NAME": os.environ.get("STATEMODES_MARIADB_NAME", "test"),
    "USER": os.environ.get("STATEMODES_MARIADB_USER", "root"),
    "HOST": "127.0.0.1",
    "PORT": os.environ.get("STATEMODES_MARIADB_PORT", "3306"),
    "TEST": {"NAME": f"test_statemodes_{os.getpid()}"},
}

# SQL mode's SQLite tests use a file database: several connections (one per thread) must share
# it, which an in-memory database does not allow with real locking. WAL, as docs/sql.md advises:
# a reader's open transaction (a TestCase's) must not block the session writes.
import tempfile  # noqa: E402

DATABASES["statesqlite"] = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": os.path.join(tempfile.gettempdir(), "statemodes-state.sqlite3"),
    "TEST": {"NAME": os.path.join(tempfile.gettempdir(), f"statemodes-test-{os.getpid()}.sqlite3")},
    "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL"},
}
