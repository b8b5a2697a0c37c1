"""Settings of the web-farm test site: the state server's address comes from the environment."""

from __future__ import annotations

import os

SECRET_KEY = "farm-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "tests.farmapp.urls"
DATABASES: dict[str, dict[str, str]] = {}
INSTALLED_APPS = ["django_statemodes"]
MIDDLEWARE = ["django_statemodes.middleware.SessionStateMiddleware"]
SESSION_ENGINE = "django_statemodes.backends.stateserver"
STATEMODES_STATE_CONNECTION = os.environ["FARM_STATE_CONNECTION"]
STATEMODES_STATE_NETWORK_TIMEOUT = float(os.environ.get("FARM_NETWORK_TIMEOUT", "2"))
# A farm change in progress: the layout to come (step 1) or the layout left (step 2).
STATEMODES_STATE_NEXT_CONNECTION = os.environ.get("FARM_NEXT_CONNECTION") or None
STATEMODES_STATE_PREVIOUS_CONNECTION = os.environ.get("FARM_PREVIOUS_CONNECTION") or None
# Off unless a test asks: the fault tests expect a hung server's sessions back at its SIGCONT.
STATEMODES_STATE_DOWN_INTERVAL = float(os.environ.get("FARM_DOWN_INTERVAL", "0"))
STATEMODES_APPLICATION_NAME = "farm"
# Long on purpose: a lock freed quickly after a worker dies was freed by the server, not stolen.
STATEMODES_LOCK_TIMEOUT = 60.0
FARM_HOLD_FILE = os.environ.get("FARM_HOLD_FILE", "")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_statemodes": {"handlers": ["stderr"], "level": "WARNING"},
        "django.request": {"handlers": ["stderr"], "level": "ERROR"},
    },
}
