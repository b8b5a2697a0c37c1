"""Serve the cookieless test site from a real gunicorn process (browser and security tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path

from tests.server import ROOT, gunicorn

PASSWORD = "correct horse battery staple"


def serve(mode: str, tmp: Path, urlconf: str | None = None) -> AbstractContextManager[int]:
    """Migrate a fresh database with one user, then serve the site in ``mode``.

    ``urlconf`` replaces the site's URLconf (``tests.cookielessapp.urls``), e.g. with
    ``tests.cookielessapp.anyurls`` whose catch-all view answers any path. The context manager
    yields the port.
    """
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.cookielessapp.settings",
        "STATEMODES_DJANGO_TESTS": "0",
        "STATEMODES_TEST_COOKIELESS": mode,
        "STATEMODES_TEST_SQLITE": str(tmp / "site.sqlite3"),
    }
    if urlconf is not None:
        env["STATEMODES_TEST_URLCONF"] = urlconf
    setup = (
        "import django; django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('migrate', verbosity=0)\n"
        "from django.contrib.auth.models import User\n"
        f"User.objects.create_user('ada', password={PASSWORD!r})\n"
    )
    subprocess.run([sys.executable, "-c", setup], cwd=ROOT, env=env, check=True, timeout=60)
    # One process: InProc sessions live in the server's memory.
    return gunicorn("tests.cookielessapp.wsgi:application", workers=1, threads=4, env=env)
