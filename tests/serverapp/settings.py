"""A real server for concurrency tests: tests.settings, with the engine from the environment."""

import os

from tests.settings import *  # noqa: F403

SESSION_ENGINE = os.environ.get("STATEMODES_TEST_ENGINE", "django_statemodes.backends.inproc")
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
MIDDLEWARE = ["django_statemodes.middleware.SessionStateMiddleware"]
