"""Settings of the demo site. Demo only: the mode is picked by environment variables.

``STATEMODES_DEMO_ENGINE`` = ``inproc`` (default) | ``stateserver`` | ``sql`` | ``redis`` | ``off``;
``STATEMODES_DEMO_DATABASE`` = ``sqlite`` (default, ``testproject/demo.sqlite3``) | ``postgres``;
``STATEMODES_DEMO_STATE_PORT`` (24242), ``STATEMODES_DEMO_REDIS_URL``, ``STATEMODES_DEMO_SQLITE``;
``STATEMODES_DEMO_COOKIELESS`` = ``UseUri`` | ``AutoDetect`` (unset: cookies);
``STATEMODES_DEMO_DEBUG`` = ``1`` (default) | ``0``. See ``docs/demo.md``.
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent

# A demo key: the site binds loopback only and holds nothing of value.
SECRET_KEY = os.environ.get("STATEMODES_DEMO_SECRET_KEY", "demo-only-not-a-secret")
DEBUG = os.environ.get("STATEMODES_DEMO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_statemodes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Replaces django.contrib.sessions.middleware.SessionMiddleware.
    "django_statemodes.middleware.SessionStateMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "testproject.views.demo_context",
            ],
        },
    }
]

# The database: SQL mode keeps its session tables here (STATEMODES_SQL_DATABASE = "default").
DATABASE = os.environ.get("STATEMODES_DEMO_DATABASE", "sqlite")
if DATABASE == "sqlite":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("STATEMODES_DEMO_SQLITE", BASE_DIR / "demo.sqlite3"),
        }
    }
elif DATABASE == "postgres":
    # libpq's own variables; the server must be local (loopback) for the demo.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "NAME": os.environ.get("PGDATABASE", "postgres"),
            "USER": os.environ.get("PGUSER", ""),
            "PASSWORD": os.environ.get("PGPASSWORD", ""),
        }
    }
else:
    raise ImproperlyConfigured(
        f"STATEMODES_DEMO_DATABASE is {DATABASE!r}; use 'sqlite' (default) or 'postgres'."
    )

# The session-state mode: ASP.NET's <sessionState mode="...">, switched by settings alone.
ENGINES = {
    "inproc": "django_statemodes.backends.inproc",
    "stateserver": "django_statemodes.backends.stateserver",
    "sql": "django_statemodes.backends.sql",
    "redis": "django_statemodes.backends.custom",
    "off": "django_statemodes.backends.off",
}
ENGINE = os.environ.get("STATEMODES_DEMO_ENGINE", "inproc")
if ENGINE not in ENGINES:
    raise ImproperlyConfigured(
        f"STATEMODES_DEMO_ENGINE is {ENGINE!r}; use one of {', '.join(ENGINES)}."
    )
SESSION_ENGINE = ENGINES[ENGINE]

if ENGINE == "stateserver":
    # scripts/demo.sh starts the state server on this port.
    STATE_PORT = int(os.environ.get("STATEMODES_DEMO_STATE_PORT", "24242"))
    STATEMODES_STATE_CONNECTION = f"tcpip=127.0.0.1:{STATE_PORT}"
if ENGINE == "redis":
    # Custom mode with the Redis provider, through a django-redis cache alias.
    # A dedicated alias and database: cache.clear() on a cache alias would flush the sessions
    # (check W060).
    STATEMODES_CUSTOM_PROVIDER = "django_statemodes.providers.redis.RedisProvider"
    STATEMODES_REDIS_ALIAS = "sessions"
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "sessions": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": os.environ.get("STATEMODES_DEMO_REDIS_URL", "redis://127.0.0.1:6379/1"),
        },
    }

COOKIELESS = os.environ.get("STATEMODES_DEMO_COOKIELESS", "")
if COOKIELESS:
    if COOKIELESS not in {"UseUri", "AutoDetect", "UseCookies"}:
        raise ImproperlyConfigured(
            f"STATEMODES_DEMO_COOKIELESS is {COOKIELESS!r}; use UseUri or AutoDetect."
        )
    STATEMODES_COOKIELESS = COOKIELESS
    # Without a session cookie the CSRF secret must live in the session, not in a cookie
    # (check E009), and so must the messages (W050).
    CSRF_USE_SESSIONS = True
    MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

# The demo's session timeout (ASP.NET timeout="20" minutes); sliding, as in ASP.NET.
SESSION_COOKIE_AGE = 20 * 60

# runserver starts a thread per request, so the derived bound on one session's waiting threads
# (half the most requests served at once) would answer some of the counter page's 20 parallel
# increments with 503. A site under gunicorn or uvicorn leaves it derived.
STATEMODES_LOCK_WAITING_THREADS = 40

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_statemodes": {"handlers": ["console"], "level": "INFO"}},
}
