"""tests.settings on SQL mode, with the session database from STATEMODES_SQLAPP_* variables.

STATEMODES_SQLAPP_ENGINE=mysql: the session database is MariaDB (or MySQL), not PostgreSQL.
STATEMODES_SQLAPP_ATOMIC=1: the site's default database is the PostgreSQL session database
itself, with ATOMIC_REQUESTS = True (session locks must still be visible at once). Otherwise the
default database is SQLite and sessions live in PostgreSQL alone (the restart test: the view
itself never needs the database that goes down).
"""

import os

from tests.settings import *  # noqa: F403

_mysql = os.environ.get("STATEMODES_SQLAPP_ENGINE") == "mysql"
_state = {
    "ENGINE": "django.db.backends.mysql" if _mysql else "django.db.backends.postgresql",
    "NAME": os.environ["STATEMODES_SQLAPP_NAME"],
    "USER": os.environ.get("STATEMODES_SQLAPP_USER", "root"),
    "HOST": "127.0.0.1",
    "PORT": os.environ.get("STATEMODES_SQLAPP_PORT", "3306" if _mysql else "5432"),
    "OPTIONS": {"connect_timeout": 2},
}
# STATEMODES_SQLAPP_PREPARE_THRESHOLD: prepared statements through a pooler that tracks them
# (PgBouncer 1.21+ with max_prepared_statements).
if os.environ.get("STATEMODES_SQLAPP_PREPARE_THRESHOLD"):
    _threshold = int(os.environ["STATEMODES_SQLAPP_PREPARE_THRESHOLD"])
    _state["OPTIONS"] = {"connect_timeout": 2, "prepare_threshold": _threshold}
if os.environ.get("STATEMODES_SQLAPP_ATOMIC") == "1":
    DATABASES = {"default": {**_state, "ATOMIC_REQUESTS": True}}
    STATEMODES_SQL_DATABASE = "default"
else:
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "state": _state,
    }
    STATEMODES_SQL_DATABASE = "state"

# Through a transaction pooler (PgBouncer): STATEMODES_SQLAPP_POOLER=transaction, and LISTEN on
# a direct alias when STATEMODES_SQLAPP_LISTEN_PORT names PostgreSQL's own port.
STATEMODES_SQL_POOLER = os.environ.get("STATEMODES_SQLAPP_POOLER") or None
if os.environ.get("STATEMODES_SQLAPP_LISTEN_PORT"):
    DATABASES["listen"] = {**_state, "PORT": os.environ["STATEMODES_SQLAPP_LISTEN_PORT"]}
    STATEMODES_SQL_LISTEN_DATABASE = "listen"

SESSION_ENGINE = "django_statemodes.backends.sql"
# The worker's pid on every response, 503s included: tests check that no worker was replaced.
MIDDLEWARE = [
    "tests.redisapp.middleware.worker_pid",
    "django_statemodes.middleware.SessionStateMiddleware",
]
ROOT_URLCONF = "tests.sqlapp.urls"
STATEMODES_LOCK_TIMEOUT = float(os.environ.get("STATEMODES_SQLAPP_LOCK_TIMEOUT", "110"))
STATEMODES_SQL_RETRY_INTERVAL = float(os.environ.get("STATEMODES_SQLAPP_RETRY", "0"))
LOGGING = {"version": 1, "disable_existing_loggers": False}
