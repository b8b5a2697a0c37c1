"""A real server for concurrency tests: tests.settings, with the engine from the environment."""

import os

from tests.settings import *  # noqa: F403

SESSION_ENGINE = os.environ.get("STATEMODES_TEST_ENGINE", "django_statemodes.backends.inproc")
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
MIDDLEWARE = ["django_statemodes.middleware.SessionStateMiddleware"]
# Django's own middleware, for a site that runs one of Django's engines before the switch.
if os.environ.get("STATEMODES_TEST_MIDDLEWARE") == "django":
    MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
if "STATEMODES_TEST_IMPORT_FROM" in os.environ:
    STATEMODES_IMPORT_FROM = os.environ["STATEMODES_TEST_IMPORT_FROM"]
