"""A real headless Chromium against a real server: cookieless sessions as a person uses them.

The site (tests/cookielessapp) is served by gunicorn on a free loopback port, with its own SQLite
file and one user. Chromium is Debian's (scripts/install-browser.sh), driven by Playwright; when
it is missing the tests skip, or fail under STATEMODES_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REQUIRE_SERVICES
from tests.server import ROOT, gunicorn

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery staple"
KEYED = re.compile(r"/\(S\(([a-z0-9]{32})\)(X\(1\))?\)/")
# Chromium's own switch for "block all cookies" (chrome://settings/cookies).
BLOCK_COOKIES = {"profile": {"default_content_setting_values": {"cookies": 2}}}


def need_chromium() -> Any:
    """Return Playwright's sync API, or skip (fail when services are required)."""
    problem = None
    if not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} is missing (run scripts/install-browser.sh)"
    try:
        from playwright import sync_api
    except ImportError:
        problem = "playwright is not installed (pip install playwright)"
    if problem:
        if REQUIRE_SERVICES:
            pytest.fail(problem + " (STATEMODES_REQUIRE_SERVICES=1)")
        pytest.skip(problem)
    return sync_api


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    sync_api = need_chromium()
    with sync_api.sync_playwright() as running:
        yield running


def serve(mode: str, tmp: Path) -> Any:
    """Migrate a fresh database with one user, then serve the site in ``mode``."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.cookielessapp.settings",
        "STATEMODES_DJANGO_TESTS": "0",
        "STATEMODES_TEST_COOKIELESS": mode,
        "STATEMODES_TEST_SQLITE": str(tmp / "site.sqlite3"),
    }
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


@pytest.fixture(scope="module")
def use_uri_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve("UseUri", tmp_path_factory.mktemp("useuri")) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def auto_detect_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve("AutoDetect", tmp_path_factory.mktemp("autodetect")) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def cookies_blocked(playwright: Any, tmp_path: Path) -> Iterator[Any]:
    """A browser whose profile blocks every cookie."""
    (tmp_path / "Default").mkdir()
    (tmp_path / "Default" / "Preferences").write_text(json.dumps(BLOCK_COOKIES))
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path), executable_path=CHROMIUM, args=ARGS, headless=True
    )
    context.set_default_timeout(15_000)
    yield context
    context.close()


@pytest.fixture
def cookies_allowed(playwright: Any) -> Iterator[Any]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
    context = browser.new_context()
    context.set_default_timeout(15_000)
    yield context
    browser.close()


def log_in(page: Any) -> None:
    """Follow the home page's {% url %} link to the login form and post it (with CSRF)."""
    assert page.inner_text("#who") == "Hello, stranger"
    page.click("#login")
    assert page.inner_text("h1") == "Log in"
    page.fill("#id_username", "ada")
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("#login-form button")
    assert page.inner_text("#who") == "Welcome back, ada"


def five_pages(page: Any) -> list[str]:
    """Follow {% url %} and relative links and a redirect; return the URLs visited."""
    urls = []
    for link in ["#first", "#next-relative", "#next-url", "#next-redirect", "#next-url"]:
        with page.expect_navigation():
            page.click(link)
        assert page.inner_text("#who") == "Welcome back, ada", page.url
        urls.append(page.url)
    assert page.inner_text("h1") == "Page 5"
    return urls


def test_a_browser_without_cookies_stays_logged_in_through_the_url(
    use_uri_site: str, cookies_blocked: Any
) -> None:
    page = cookies_blocked.new_page()
    page.goto(use_uri_site + "/")
    before_login = KEYED.search(page.url)
    assert before_login, page.url
    log_in(page)
    match = KEYED.search(page.url)
    assert match and match.group(1) != before_login.group(1)  # rotated on login
    urls = five_pages(page)
    assert [KEYED.search(url).group(1) for url in urls] == [match.group(1)] * 5  # type: ignore[union-attr]
    assert urls[1].endswith("/page/2/") and urls[3].endswith("/page/4/")
    # One session throughout: home twice (its first run stored the session, then the 302),
    # home after the login, five pages.
    assert page.inner_text("#views") == "views: 8"
    assert cookies_blocked.cookies() == []


def logged_in_tour(context: Any, site: str) -> list[str]:
    """Open the site, log in and visit five pages; return every URL after the login."""
    page = context.new_page()
    page.goto(site + "/")
    log_in(page)
    return [page.url, *five_pages(page)]


def test_a_browser_with_cookies_under_autodetect_uses_a_cookie_and_clean_urls(
    auto_detect_site: str, cookies_allowed: Any
) -> None:
    urls = logged_in_tour(cookies_allowed, auto_detect_site)
    assert all("(" not in url and "AspxAutoDetectCookieSupport" not in url for url in urls), urls
    names = {cookie["name"] for cookie in cookies_allowed.cookies()}
    assert "sessionid" in names


def test_a_browser_without_cookies_under_autodetect_goes_cookieless(
    auto_detect_site: str, cookies_blocked: Any
) -> None:
    urls = logged_in_tour(cookies_blocked, auto_detect_site)
    assert all((m := KEYED.search(url)) and m.group(2) == "X(1)" for url in urls), urls
    assert cookies_blocked.cookies() == []
