"""Settings for serving the cookieless test site from a real server (gunicorn).

STATEMODES_TEST_COOKIELESS picks the mode (UseUri or AutoDetect); STATEMODES_TEST_SQLITE is the
database file, migrated and given a user by the test before the server starts.
"""

import os

from tests.cookielessapp import site_settings
from tests.settings import *  # noqa: F403

globals().update(site_settings(os.environ.get("STATEMODES_TEST_COOKIELESS", "UseUri")))
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("STATEMODES_TEST_SQLITE", ":memory:"),
    },
}
INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "sessions_tests"]  # noqa: F405
# The security tests serve a URLconf with a catch-all view (tests.cookielessapp.anyurls), so that
# paths such as //evil.example/ reach a view that reads or writes the session.
ROOT_URLCONF = os.environ.get("STATEMODES_TEST_URLCONF", ROOT_URLCONF)  # noqa: F405
