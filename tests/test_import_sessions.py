"""``manage.py importsessions``: users logged in under Django's engines stay logged in after the
switch to each of our modes (real stores: the state server process, SQLite, PostgreSQL, Redis)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from importlib import import_module
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.cache import caches
from django.core.management import call_command
from django.core.management.base import CommandError
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import path

from django_statemodes.core import registry
from tests.fixtures_sql import ALIASES
from tests.fixtures_stateserver import StateServerProcess

pytestmark = pytest.mark.django_db(databases=["default", *ALIASES])

DJANGO = "django.contrib.sessions.backends."
REDIS_ALIAS = "statemodes-redis"


def whoami(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.user.get_username() if request.user.is_authenticated else "-")


urlpatterns = [path("whoami/", whoami)]


@pytest.fixture(scope="module")
def state_server() -> Iterator[StateServerProcess]:
    with StateServerProcess() as process:
        yield process


# Each of our out-of-process modes, configured as a site would (settings only).
TARGETS = ["stateserver", *(f"sql-{alias}" for alias in ALIASES), "redis"]


@pytest.fixture(params=TARGETS)
def target(request: Any, sql_tables: list[str]) -> dict[str, Any]:
    name: str = request.param
    if name == "stateserver":
        server: StateServerProcess = request.getfixturevalue("state_server")
        return {
            "SESSION_ENGINE": "django_statemodes.backends.stateserver",
            "STATEMODES_STATE_CONNECTION": server.connection,
        }
    if name == "redis":
        request.getfixturevalue("redis_server")
        return {
            "SESSION_ENGINE": "django_statemodes.backends.custom",
            "STATEMODES_CUSTOM_PROVIDER": "django_statemodes.providers.redis.RedisProvider",
            "STATEMODES_REDIS_ALIAS": REDIS_ALIAS,
        }
    return {
        "SESSION_ENGINE": "django_statemodes.backends.sql",
        "STATEMODES_SQL_DATABASE": name.removeprefix("sql-"),
    }


@pytest.fixture
def site(settings: Any, tmp_path: Path) -> Any:
    settings.ROOT_URLCONF = __name__
    settings.SESSION_FILE_PATH = str(tmp_path)
    settings.SESSION_CACHE_ALIAS = REDIS_ALIAS
    return settings


def log_in(settings: Any, source: str, count: int) -> list[Client]:
    """Log ``count`` users in under Django's engine ``source``; return their browsers."""
    settings.SESSION_ENGINE = DJANGO + source
    browsers = []
    for n in range(count):
        name = f"user{n}-{os.getpid()}-{time.monotonic_ns()}"
        User.objects.create_user(name, password="pw-not-a-secret")
        browser = Client()
        assert browser.login(username=name, password="pw-not-a-secret")
        assert browser.get("/whoami/").content.decode() == name
        browsers.append(browser)
    return browsers


def switch(settings: Any, target: dict[str, Any]) -> None:
    for name, value in target.items():
        setattr(settings, name, value)
    registry.close_all()  # a provider of the previous test's settings must not be reused


def run(*args: str) -> str:
    out = StringIO()
    call_command("importsessions", *args, stdout=out, stderr=out)
    return out.getvalue()


def test_users_logged_in_under_djangos_db_engine_stay_logged_in_in_every_mode(
    site: Any, target: dict[str, Any]
) -> None:
    browsers = log_in(site, "db", 3)
    names = [browser.get("/whoami/").content.decode() for browser in browsers]
    keys = [browser.cookies[django_settings.SESSION_COOKIE_NAME].value for browser in browsers]
    switch(site, target)
    # Before the import, the new store holds none of them: the switch alone logs them out.
    provider = import_module(django_settings.SESSION_ENGINE).SessionStore.get_provider()
    assert [provider.get(key) for key in keys] == [None, None, None]
    report = run("--from", DJANGO + "db")
    assert "3 live session(s)" in report and "3 copied" in report, report
    assert [browser.get("/whoami/").content.decode() for browser in browsers] == names
    # Run again: every key is already there, and nothing is overwritten.
    again = run("--from", DJANGO + "db")
    assert "0 copied, 3 already in" in again, again


@pytest.mark.parametrize("source", ["file", "cache"])
def test_file_and_cache_sessions_are_imported_too(
    site: Any, state_server: StateServerProcess, redis_server: None, source: str
) -> None:
    caches[REDIS_ALIAS].clear()
    browsers = log_in(site, source, 2)
    names = [browser.get("/whoami/").content.decode() for browser in browsers]
    switch(
        site,
        {
            "SESSION_ENGINE": "django_statemodes.backends.stateserver",
            "STATEMODES_STATE_CONNECTION": state_server.connection,
        },
    )
    report = run("--from", DJANGO + source)
    assert "2 live session(s)" in report and "2 copied" in report, report
    assert [browser.get("/whoami/").content.decode() for browser in browsers] == names


def test_the_time_left_is_kept_and_a_dry_run_copies_nothing(
    site: Any, state_server: StateServerProcess
) -> None:
    site.SESSION_ENGINE = DJANGO + "db"
    old = import_module(DJANGO + "db").SessionStore()
    old["k"] = "v"
    old.set_expiry(600)
    old.save()
    key = old.session_key
    assert key is not None
    switch(
        site,
        {
            "SESSION_ENGINE": "django_statemodes.backends.stateserver",
            "STATEMODES_STATE_CONNECTION": state_server.connection,
        },
    )
    store = import_module(django_settings.SESSION_ENGINE).SessionStore
    assert "1 would be copied" in run("--from", DJANGO + "db", "--dry-run")
    assert store.get_provider().get(key) is None
    run("--from", DJANGO + "db")
    session = store(key, access="ReadOnly")
    assert session["k"] == "v"
    # set_expiry(600) travels in the data, and the store's timeout is what the row had left.
    assert 0 < session.get_expiry_age() <= 600


def test_engines_that_cannot_be_imported_from_or_into_say_why(site: Any) -> None:
    site.SESSION_ENGINE = "django_statemodes.backends.inproc"
    with pytest.raises(CommandError, match="each web process"):
        run("--from", DJANGO + "db")
    site.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    with pytest.raises(CommandError, match="one of django-statemodes' engines"):
        run("--from", DJANGO + "file")
    site.SESSION_ENGINE = "django_statemodes.backends.stateserver"
    with pytest.raises(CommandError, match="live in the browser"):
        run("--from", DJANGO + "signed_cookies")
    with pytest.raises(CommandError, match="choose one of"):
        run("--from", "myapp.sessions")
    site.SESSION_CACHE_ALIAS = "default"  # LocMemCache: in each web process, no key listing
    with pytest.raises(CommandError, match="cannot list its keys"):
        run("--from", DJANGO + "cache")
