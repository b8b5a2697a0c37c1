"""tests.settings served by uvicorn or runserver, with the engine chosen by the environment.

``STATEMODES_ASGI_ENGINE``: ``inproc``, ``stateserver`` (``STATEMODES_ASGI_STATE_PORT``: a
state server the test started), ``sql-sqlite`` (``STATEMODES_ASGI_SQLITE``: a file database
whose tables the test installed), ``sql-pg`` (the database ``STATEMODES_PG_NAME``, ``test`` by
default) or ``redis`` (Custom mode, the Redis provider on a django-redis alias). Every run names
itself in ``STATEMODES_ASGI_RUN``: the application name and the Redis key prefix, so runs never
share sessions. ``STATEMODES_ASGI_FLAGS`` is the folder of the hold view's flag files.
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

ENGINE = os.environ.get("STATEMODES_ASGI_ENGINE", "inproc")
RUN = os.environ.get("STATEMODES_ASGI_RUN", "asgi")

ROOT_URLCONF = "tests.asgiapp.urls"
MIDDLEWARE = ["django_statemodes.middleware.SessionStateMiddleware"]
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
STATEMODES_APPLICATION_NAME = RUN
# Small, so that a connection per thread or per request shows at once against the bound the
# tests assert: workers x (2 x 4 + 1).
STATEMODES_MAX_CONNECTIONS = int(os.environ.get("STATEMODES_ASGI_MAX_CONNECTIONS", "4"))

if ENGINE == "inproc":
    SESSION_ENGINE = "django_statemodes.backends.inproc"
elif ENGINE == "stateserver":
    SESSION_ENGINE = "django_statemodes.backends.stateserver"
    STATEMODES_STATE_CONNECTION = f"tcpip=127.0.0.1:{os.environ['STATEMODES_ASGI_STATE_PORT']}"
elif ENGINE == "sql-sqlite":
    SESSION_ENGINE = "django_statemodes.backends.sql"
    STATEMODES_SQL_DATABASE = "state"
    DATABASES["state"] = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["STATEMODES_ASGI_SQLITE"],
        # WAL, as docs/sql.md advises for several processes on one file.
        "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL", "timeout": 30},
    }
elif ENGINE == "sql-pg":
    SESSION_ENGINE = "django_statemodes.backends.sql"
    STATEMODES_SQL_DATABASE = "state"
    DATABASES["state"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("STATEMODES_PG_NAME", "test"),
        "USER": os.environ.get("STATEMODES_PG_USER", "root"),
        "HOST": "127.0.0.1",
        "PORT": os.environ.get("STATEMODES_PG_PORT", "5432"),
        # Names this run's connections in pg_stat_activity, for whoever reads it by hand (the
        # tests count the workers' own sockets, which needs no cooperation from the driver).
        "OPTIONS": {"application_name": RUN},
    }
elif ENGINE == "redis":
    SESSION_ENGINE = "django_statemodes.backends.custom"
    STATEMODES_CUSTOM_PROVIDER = "django_statemodes.providers.redis.RedisProvider"
    STATEMODES_CUSTOM_PROVIDER_OPTIONS = {"key_prefix": RUN}
    STATEMODES_REDIS_ALIAS = "statemodes-redis"
    CACHES["statemodes-redis"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:6379/15",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 5},
    }
else:
    raise ValueError(f"unknown STATEMODES_ASGI_ENGINE {ENGINE!r}")

# DEBUG is False, as in production: the 500 page says nothing, so the tests read the server's
# stderr, where Django's request logger writes the traceback (its default sends it nowhere
# without DEBUG but to ADMINS by mail).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.request": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
        "django_statemodes": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}

# After a switch from Django's file engine: sessions move on their first request.
if "STATEMODES_ASGI_IMPORT_FROM" in os.environ:
    STATEMODES_IMPORT_FROM = os.environ["STATEMODES_ASGI_IMPORT_FROM"]
    SESSION_FILE_PATH = os.environ["STATEMODES_ASGI_SESSION_FILES"]
