"""Zero lost updates through a real threaded server (one process, 8 threads), shown beside
Django's cache engine on LocMemCache, which loses updates on the same test."""

from __future__ import annotations

import pytest

from tests.server import gunicorn, hammer

pytestmark = pytest.mark.slow

APP = "tests.serverapp.wsgi"


def test_inproc_loses_no_update_under_8_concurrent_clients() -> None:
    with gunicorn(APP, workers=1, threads=8) as port:
        expected, actual = hammer(port)
    assert expected == 401
    assert actual == 401


def test_django_cache_engine_loses_updates_on_the_same_test() -> None:
    engine = {"STATEMODES_TEST_ENGINE": "django.contrib.sessions.backends.cache"}
    with gunicorn(APP, workers=1, threads=8, env=engine) as port:
        expected, actual = hammer(port)
    assert expected == 401
    assert actual < expected  # lost updates: Django has no session locking
