"""Sessions by user as people use them: two Chromium browsers, one user, a real server.

The site (tests/userapp: Django's login and password-change views, the sessions page of
django_statemodes.urls) runs in gunicorn on a free loopback port, once per mode whose store keeps
the index: InProc, SQL on PostgreSQL, StateServer (its own daemon), Redis (a private
redis-server) and Redis Cluster (six private nodes). Chromium is Debian's, driven by Playwright, as in the cookieless tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from django_statemodes.core.registry import load_provider_class
from tests.fixtures_sql import PG, PG_ENABLED
from tests.fixtures_stateserver import StateServerProcess
from tests.redis_cluster import available as cluster_available
from tests.redis_cluster import running_cluster
from tests.redis_servers import RedisServer, running
from tests.server import ROOT, gunicorn
from tests.test_browser_cookieless import ARGS, CHROMIUM, need_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "correct horse battery staple"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"

PROVIDERS = {
    "inproc": "django_statemodes.providers.inproc.InProcProvider",
    "sql": "django_statemodes.providers.sql.SQLStateProvider",
    "stateserver": "django_statemodes.providers.stateserver.StateServerProvider",
    "redis": "django_statemodes.providers.redis.RedisProvider",
    "redis-cluster": "django_statemodes.providers.redis.RedisProvider",
}


def indexes_users(mode: str) -> bool:
    return load_provider_class(PROVIDERS[mode]).indexes_users


MODES = [
    pytest.param(
        mode,
        marks=pytest.mark.skipif(
            not indexes_users(mode), reason=f"the {mode} provider keeps no index of users yet"
        ),
    )
    for mode in PROVIDERS
]


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    sync_api = need_chromium()
    with sync_api.sync_playwright() as running_playwright:
        yield running_playwright


@pytest.fixture(params=MODES)
def site(request: Any, tmp_path: Path, sql_tables: list[str]) -> Iterator[str]:
    """The site in one mode on a free port, with one user: its base URL.

    ``sql_tables`` (session-scoped) is set up before Playwright's event loop runs, where
    Django refuses database work.
    """
    mode = request.param
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.userapp.settings",
        "STATEMODES_DJANGO_TESTS": "0",
        "STATEMODES_TEST_ENGINE": mode,
        "STATEMODES_TEST_SQLITE": str(tmp_path / "users.sqlite3"),
        # Its own application: SQL rows and Redis keys of other runs are never listed.
        "STATEMODES_APPLICATION_NAME": f"userbrowser-{os.getpid()}-{mode}",
    }
    with ExitStack() as stack:
        if mode == "sql":
            if not PG_ENABLED:
                pytest.skip("PostgreSQL is not reachable")
            env["STATEMODES_PG_NAME"] = connections[PG].settings_dict["NAME"]
        elif mode == "stateserver":
            server = stack.enter_context(StateServerProcess())
            env["STATEMODES_STATE_CONNECTION"] = server.connection
        elif mode == "redis":
            (redis_server,) = stack.enter_context(running(RedisServer()))
            env["STATEMODES_TEST_REDIS_URL"] = redis_server.url
        elif mode == "redis-cluster":
            reason = cluster_available()
            if reason is not None:
                pytest.skip(reason)
            cluster = stack.enter_context(running_cluster())
            env["STATEMODES_TEST_REDIS_CLUSTER"] = ",".join(cluster.urls[:3])
        full_env = {**os.environ, **env}
        setup = (
            "import django; django.setup()\n"
            "from django.core.management import call_command\n"
            "call_command('migrate', verbosity=0)\n"
            "from django.contrib.auth.models import User\n"
            f"User.objects.create_user('ada', password={PASSWORD!r})\n"
        )
        subprocess.run([sys.executable, "-c", setup], cwd=ROOT, env=full_env, check=True)
        # One worker process: InProc keeps sessions in the server's memory.
        port = stack.enter_context(
            gunicorn("tests.userapp.wsgi:application", workers=1, threads=4, env=env)
        )
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def browsers(playwright: Any) -> Iterator[tuple[Any, Any]]:
    """Two separate browser profiles: Chromium as it is, and one that says it is Firefox."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
    first = browser.new_context()
    second = browser.new_context(user_agent=FIREFOX)
    for context in (first, second):
        context.set_default_timeout(15_000)
    yield first.new_page(), second.new_page()
    browser.close()


def log_in(page: Any, site: str, password: str = PASSWORD) -> None:
    page.goto(site + "/login/")
    page.fill("#id_username", "ada")
    page.fill("#id_password", password)
    with page.expect_navigation():
        page.click("#form button")
    assert page.inner_text("#who") == "ada"


def who(page: Any, site: str) -> str:
    page.goto(site + "/")
    text: str = page.inner_text("#who")
    return text


def test_two_browsers_list_end_and_sign_out_everywhere(
    site: str, browsers: tuple[Any, Any]
) -> None:
    chromium, firefox = browsers
    log_in(chromium, site)
    log_in(firefox, site)

    # The first browser's page lists both, each with its browser.
    chromium.goto(site + "/account/sessions/")
    this = chromium.inner_text(".this-device")
    others = chromium.locator(".other-devices .device")
    assert "Chrome" in this and "on Linux" in this and "127.0.0.1" in this
    assert others.count() == 1
    assert "Firefox 128 on Linux" in others.first.inner_text()

    # Ending the other one from the first: its next request is anonymous.
    with chromium.expect_navigation():
        others.first.locator("button").click()
    assert chromium.locator(".no-other-devices").count() == 1
    assert who(firefox, site) == "stranger"
    assert who(chromium, site) == "ada"

    # Signed in again there; a password change here signs every other device out.
    log_in(firefox, site)
    chromium.goto(site + "/account/sessions/")
    assert chromium.locator(".other-devices .device").count() == 1
    chromium.goto(site + "/password/")
    chromium.fill("#id_old_password", PASSWORD)
    chromium.fill("#id_new_password1", PASSWORD + " 2")
    chromium.fill("#id_new_password2", PASSWORD + " 2")
    with chromium.expect_navigation():
        chromium.click("#form button")
    assert chromium.inner_text("#who") == "ada"  # this device stays signed in
    assert who(firefox, site) == "stranger"
    chromium.goto(site + "/account/sessions/")
    assert chromium.locator(".no-other-devices").count() == 1
    assert "Chrome" in chromium.inner_text(".this-device")
