"""Switching ``SESSION_ENGINE`` without logging anyone out: ``manage.py importsessions`` copies
Django's sessions into each out-of-process mode, and ``STATEMODES_IMPORT_FROM`` moves each one on
its first request, in every mode, InProc included (real stores: the state server process,
SQLite, PostgreSQL, MariaDB, Redis)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from importlib import import_module
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import logout
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.core.cache import caches
from django.core.management import call_command
from django.core.management.base import CommandError
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client
from django.urls import path

from django_statemodes.core import registry
from tests.asgi_servers import counter, uvicorn
from tests.conftest import free_port
from tests.fixtures_sql import ALIASES
from tests.fixtures_stateserver import StateServerProcess
from tests.server import ROOT, get, gunicorn, session_cookie

pytestmark = pytest.mark.django_db(databases=["default", *ALIASES])

DJANGO = "django.contrib.sessions.backends."
REDIS_ALIAS = "statemodes-redis"


def whoami(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.user.get_username() if request.user.is_authenticated else "-")


def sign_out(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponse("signed out")


async def async_counter(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(await request.session.aget("counter")))


urlpatterns = [
    path("whoami/", whoami),
    path("sign-out/", sign_out),
    path("async-counter/", async_counter),
]


@pytest.fixture(scope="module")
def state_server() -> Iterator[StateServerProcess]:
    with StateServerProcess() as process:
        yield process


# Each of our out-of-process modes, configured as a site would (settings only).
TARGETS = ["stateserver", *(f"sql-{alias}" for alias in ALIASES), "redis"]


@pytest.fixture(params=TARGETS)
def target(request: Any, sql_tables: list[str]) -> dict[str, Any]:
    return configured(request, request.param)


@pytest.fixture(params=["inproc", *TARGETS])
def mode(request: Any, sql_tables: list[str]) -> dict[str, Any]:
    """Every mode of ours that keeps sessions, InProc included."""
    return configured(request, request.param)


def configured(request: Any, name: str) -> dict[str, Any]:
    if name == "inproc":
        return {"SESSION_ENGINE": "django_statemodes.backends.inproc"}
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
    """Log ``count`` users in under the engine ``source`` (Django's, or a full path)."""
    settings.SESSION_ENGINE = source if "." in source else DJANGO + source
    browsers = []
    for n in range(count):
        name = f"user{n}-{os.getpid()}-{time.monotonic_ns()}"
        User.objects.create_user(name, password="pw-not-a-secret")
        browser = Client()
        assert browser.login(username=name, password="pw-not-a-secret")
        assert browser.get("/whoami/").content.decode() == name
        browsers.append(browser)
    return browsers


def switch(settings: Any, target: dict[str, Any], browsers: Sequence[Client] = ()) -> list[Client]:
    """Switch the settings to ``target``; return ``browsers`` (their cookies) in new clients.

    A client's handler keeps the middleware it started with, and the middleware the engine it
    was built with, as a web process does: only a new client sees the new engine.
    """
    for name, value in target.items():
        setattr(settings, name, value)
    registry.close_all()  # a provider of the previous test's settings must not be reused
    fresh = []
    for browser in browsers:
        client = Client()
        client.cookies = browser.cookies
        fresh.append(client)
    return fresh


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
    browsers = switch(site, target, browsers)
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
    browsers = switch(
        site,
        {
            "SESSION_ENGINE": "django_statemodes.backends.stateserver",
            "STATEMODES_STATE_CONNECTION": state_server.connection,
        },
        browsers,
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
    with pytest.raises(CommandError, match="each web process.*Set STATEMODES_IMPORT_FROM"):
        run("--from", DJANGO + "db")
    site.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    with pytest.raises(CommandError, match="one of django-statemodes' engines"):
        run("--from", DJANGO + "file")
    site.SESSION_ENGINE = "django_statemodes.backends.stateserver"
    with pytest.raises(CommandError, match="live in the browser"):
        run("--from", DJANGO + "signed_cookies")
    with pytest.raises(CommandError, match="choose one of"):
        run("--from", "myapp.sessions")
    with pytest.raises(CommandError, match="STATEMODES_IMPORT_FROM = 'django_statemodes"):
        run("--from", "django_statemodes.backends.sql")
    site.SESSION_CACHE_ALIAS = "default"  # LocMemCache: in each web process, no key listing
    with pytest.raises(CommandError, match="cannot list its keys"):
        run("--from", DJANGO + "cache")


# STATEMODES_IMPORT_FROM: each session moves on its first request.


def cookie_of(browser: Client) -> str:
    return browser.cookies[django_settings.SESSION_COOKIE_NAME].value


def test_with_import_from_users_stay_logged_in_in_every_mode_and_sessions_move_once(
    site: Any, mode: dict[str, Any]
) -> None:
    browsers = log_in(site, "db", 3)
    names = [browser.get("/whoami/").content.decode() for browser in browsers]
    keys = [cookie_of(browser) for browser in browsers]
    browsers = switch(site, {**mode, "STATEMODES_IMPORT_FROM": DJANGO + "db"}, browsers)
    provider = import_module(django_settings.SESSION_ENGINE).SessionStore.get_provider()
    assert [provider.get(key) for key in keys] == [None, None, None]
    assert Session.objects.filter(session_key__in=keys).count() == 3
    # The first request of each moves its session: same key, same user, the old row deleted.
    assert [browser.get("/whoami/").content.decode() for browser in browsers] == names
    assert [cookie_of(browser) for browser in browsers] == keys
    assert all(provider.get(key) is not None for key in keys)
    assert Session.objects.filter(session_key__in=keys).count() == 0
    # Later requests read the new store alone.
    assert [browser.get("/whoami/").content.decode() for browser in browsers] == names
    # Signed out under the new engine, the old cookie brings nobody back from the old store.
    assert browsers[0].get("/sign-out/").content == b"signed out"
    replay = Client()
    replay.cookies[django_settings.SESSION_COOKIE_NAME] = keys[0]
    assert replay.get("/whoami/").content.decode() == "-"
    assert [browser.get("/whoami/").content.decode() for browser in browsers[1:]] == names[1:]


def test_sessions_move_between_two_of_our_modes(
    site: Any, state_server: StateServerProcess
) -> None:
    server = {"STATEMODES_STATE_CONNECTION": state_server.connection}
    switch(site, server)
    browsers = log_in(site, "django_statemodes.backends.stateserver", 2)
    names = [browser.get("/whoami/").content.decode() for browser in browsers]
    keys = [cookie_of(browser) for browser in browsers]
    old = import_module("django_statemodes.backends.stateserver").SessionStore.get_provider()
    browsers = switch(
        site,
        {
            "SESSION_ENGINE": "django_statemodes.backends.inproc",
            "STATEMODES_IMPORT_FROM": "django_statemodes.backends.stateserver",
        },
        browsers,
    )
    assert [browser.get("/whoami/").content.decode() for browser in browsers] == names
    assert [old.get(key) for key in keys] == [None, None]
    # A key neither store holds: the old engine's own miss looks nowhere else, and nobody is in.
    stranger = Client()
    stranger.cookies[django_settings.SESSION_COOKIE_NAME] = "x" * 32
    assert stranger.get("/whoami/").content.decode() == "-"


def test_a_session_moves_on_an_async_request_too(site: Any) -> None:
    # From Django's file engine: the old store's read runs in a thread, away from the test's
    # database transaction.
    site.SESSION_ENGINE = DJANGO + "file"
    old = import_module(DJANGO + "file").SessionStore()
    old["counter"] = 41
    old.save()
    key = old.session_key
    assert key is not None
    switch(
        site,
        {
            "SESSION_ENGINE": "django_statemodes.backends.inproc",
            "STATEMODES_IMPORT_FROM": DJANGO + "file",
        },
    )
    browser = AsyncClient()
    browser.cookies[django_settings.SESSION_COOKIE_NAME] = key
    response = asyncio.run(browser.get("/async-counter/"))
    assert response.content == b"41"
    assert not import_module(DJANGO + "file").SessionStore().exists(key)


def test_a_session_the_new_store_refuses_stays_in_the_old_one(
    site: Any, caplog: pytest.LogCaptureFixture
) -> None:
    browsers = log_in(site, "db", 1)
    key = cookie_of(browsers[0])
    browsers = switch(
        site,
        {
            "SESSION_ENGINE": "django_statemodes.backends.sql",
            "STATEMODES_SQL_DATABASE": ALIASES[0],
            "STATEMODES_IMPORT_FROM": DJANGO + "db",
            "STATEMODES_MAX_SESSION_SIZE": 16,  # smaller than any signed-in session
        },
        browsers,
    )
    with caplog.at_level("WARNING", logger="django_statemodes"):
        assert browsers[0].get("/whoami/").content.decode() == "-"
    assert f"Session {key[:8]}... not moved from {DJANGO}db" in caplog.text
    # Rolling back to Django's engine finds it where it was.
    assert Session.objects.filter(session_key=key).count() == 1


def test_an_old_store_that_is_down_is_a_503_and_the_session_moves_once_it_is_back(
    site: Any, redis_server: None
) -> None:
    # cached_db: Django's engine reads its cache first, and raises what the cache client raises.
    browsers = log_in(site, "cached_db", 1)
    name = browsers[0].get("/whoami/").content.decode()
    key = cookie_of(browsers[0])
    live = site.CACHES[REDIS_ALIAS]
    down = {**live, "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there
    site.CACHES = {**site.CACHES, REDIS_ALIAS: down}
    browsers = switch(
        site,
        {
            "SESSION_ENGINE": "django_statemodes.backends.inproc",
            "STATEMODES_IMPORT_FROM": DJANGO + "cached_db",
        },
        browsers,
    )
    response = browsers[0].get("/whoami/")
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert cookie_of(browsers[0]) == key  # not logged out: no new session was started
    assert Session.objects.filter(session_key=key).count() == 1
    site.CACHES = {**site.CACHES, REDIS_ALIAS: live}
    assert browsers[0].get("/whoami/").content.decode() == name


def test_without_import_from_an_unknown_key_is_still_never_adopted(site: Any) -> None:
    browsers = log_in(site, "db", 1)
    key = cookie_of(browsers[0])
    browsers = switch(site, {"SESSION_ENGINE": "django_statemodes.backends.inproc"}, browsers)
    assert browsers[0].get("/whoami/").content.decode() == "-"
    assert Session.objects.filter(session_key=key).count() == 1


def test_through_gunicorn_an_inproc_site_keeps_the_sessions_of_djangos_db_engine(
    tmp_path: Path,
) -> None:
    # The deployment: one site, its database file, served by Django's engine, then restarted on
    # InProc with STATEMODES_IMPORT_FROM. The counter a browser had survives the restart.
    database = str(tmp_path / "site.sqlite3")
    env = {"STATEMODES_TEST_SQLITE": database, "STATEMODES_DJANGO_TESTS": "0"}
    migrate = [sys.executable, "-m", "django", "migrate", "sessions", "--verbosity", "0"]
    site_env = {**os.environ, **env, "DJANGO_SETTINGS_MODULE": "tests.serverapp.settings"}
    subprocess.run(migrate, cwd=ROOT, env=site_env, check=True)
    before = {
        **env,
        "STATEMODES_TEST_ENGINE": DJANGO + "db",
        "STATEMODES_TEST_MIDDLEWARE": "django",
    }
    with gunicorn("tests.serverapp.wsgi", workers=1, threads=2, env=before) as port:
        _, headers, _ = get(port, "/increment/")
        key = session_cookie(headers)
        assert [json.loads(get(port, "/increment/", key)[2])["counter"] for _ in "ab"] == [2, 3]
    after = {**env, "STATEMODES_TEST_IMPORT_FROM": DJANGO + "db"}  # InProc, the default here
    with gunicorn("tests.serverapp.wsgi", workers=1, threads=2, env=after) as port:
        assert json.loads(get(port, "/read/", key)[2]) == {"counter": 3}
        assert json.loads(get(port, "/increment/", key)[2]) == {"counter": 4}
        assert json.loads(get(port, "/read/", key)[2]) == {"counter": 4}
    with sqlite3.connect(database) as rows:
        query = "SELECT COUNT(*) FROM django_session WHERE session_key = ?"
        assert rows.execute(query, (key,)).fetchone() == (0,)


def test_under_uvicorn_an_inproc_site_keeps_the_sessions_of_djangos_file_engine(
    site: Any,
) -> None:
    # The async path: the old engine is read in a thread of the ASGI worker, then the async
    # view reads and writes the moved session.
    old = import_module(DJANGO + "file").SessionStore()
    old["counter"] = 7
    old.save()
    key = old.session_key
    assert key is not None
    env = {
        "STATEMODES_ASGI_ENGINE": "inproc",
        "STATEMODES_ASGI_IMPORT_FROM": DJANGO + "file",
        # Where the file engine wrote it: the engine keeps the first SESSION_FILE_PATH it read.
        "STATEMODES_ASGI_SESSION_FILES": old.storage_path,
    }
    with uvicorn(1, env) as server:
        assert json.loads(get(server.port, "/aincrement/", key)[2])["counter"] == 8
        assert counter(server.port, key) == 8
    assert not import_module(DJANGO + "file").SessionStore().exists(key)
