"""A real headless Chromium against real servers: cookieless sessions as a person uses them.

Two sites, each on a free loopback port with its own SQLite file: the demo site (testproject),
started by scripts/demo.sh as its users start it, and a purpose-built site (tests/cookielessapp:
Django's auth views and one user) served by gunicorn. Chromium is Debian's
(scripts/install-browser.sh), driven by Playwright; when it is missing the tests skip, or fail
under STATEMODES_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest

from django_statemodes.cookieless import PROBE
from tests.conftest import REQUIRE_SERVICES
from tests.cookielessapp.serving import PASSWORD, serve
from tests.demo_site import demo_env, running_demo
from tests.server import ROOT

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


# The cookieless test site (tests/cookielessapp).


@pytest.fixture(scope="module")
def use_uri_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve("UseUri", tmp_path_factory.mktemp("useuri")) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def auto_detect_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve("AutoDetect", tmp_path_factory.mktemp("autodetect")) as port:
        yield f"http://127.0.0.1:{port}"


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


# The demo site (testproject), served by scripts/demo.sh.


def cookieless_env(mode: str, tmp: Path) -> dict[str, str]:
    """The settings of a cookieless demo in ``mode``, with its own SQLite file."""
    env = {"STATEMODES_DEMO_COOKIELESS": mode, "STATEMODES_DEMO_SQLITE": str(tmp / "demo.sqlite3")}
    if "VENV" not in os.environ and sys.prefix != sys.base_prefix:
        env["VENV"] = sys.prefix  # the demo runs in the tests' virtualenv, not a new .venv
    return env


def serve_demo(mode: str, tmp: Path) -> AbstractContextManager[str]:
    """Run the demo in ``mode`` on a free loopback port; its base URL once it answers."""
    return running_demo("--noreload", env=cookieless_env(mode, tmp), wait=120)


@pytest.fixture(scope="module")
def demo_use_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_demo("UseUri", tmp_path_factory.mktemp("demo-useuri")) as site:
        yield site


@pytest.fixture(scope="module")
def demo_auto_detect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_demo("AutoDetect", tmp_path_factory.mktemp("demo-autodetect")) as site:
        yield site


def demo_log_in(page: Any) -> None:
    """Post the demo's login form (a CSRF-protected POST) from the login page."""
    assert page.inner_text("h1") == "Log in", page.url
    assert page.locator("main form input[name=csrfmiddlewaretoken]").count() == 1
    page.fill("#id_name", "Ada")
    with page.expect_navigation():
        page.get_by_role("button", name="Log in", exact=True).click()
    assert page.inner_text("h1") == "Welcome back, Ada", page.url


# The demo's tour, from the welcome page: (link, how it is made, the page it leads to).
TOUR = [
    ("Take the tour", "url", "Page 1 of 5"),
    ("Next page, by a relative link", "relative", "Page 2 of 5"),
    ("Next page, through a redirect", "redirect", "Page 3 of 5"),
    ("Next page", "url", "Page 4 of 5"),
    ("Next page, by a relative link", "relative", "Page 5 of 5"),
    ("Back home", "url", "Welcome back, Ada"),
]


def demo_tour(page: Any) -> list[str]:
    """Follow the tour's links from the welcome page to its five pages and back; return the URLs.

    Each link is checked to be what it claims: a {% url %} link is root-relative and leads
    straight to its href, a relative one is resolved by the browser, and the redirect link's
    request is answered with a redirect to the next page.
    """
    urls = []
    for name, kind, heading in TOUR:
        link = page.get_by_role("link", name=name, exact=True)
        href = link.get_attribute("href")
        target = urljoin(page.url, href)
        with page.expect_navigation() as navigation:
            link.click()
        request = navigation.value.request
        if kind == "url":
            assert href.startswith("/") and urlsplit(page.url).path == href, (href, page.url)
        if kind == "relative":
            assert href.startswith("../") and page.url == target, (href, page.url)
        if kind == "redirect":
            assert href == "next/", href
            assert request.redirected_from is not None, page.url
            assert request.redirected_from.url == target != page.url
        else:
            assert request.redirected_from is None, page.url
        assert page.inner_text("h1") == heading, page.url
        if heading.startswith("Page"):  # the name, and a count the session keeps
            assert page.inner_text("#user-name") == "Ada", page.url
            assert page.inner_text("#pages-seen") == heading.split()[1], page.url
        urls.append(page.url)
    return urls


def session_key_shown(page: Any) -> str:
    """Open the status page through the navigation bar; return the session key it shows."""
    with page.expect_navigation():
        page.get_by_role("link", name="Status", exact=True).click()
    assert page.inner_text("h1") == "Status"
    key: str = page.inner_text("#session-key")
    return key


@pytest.mark.parametrize(("site", "flag"), [("demo_use_uri", None), ("demo_auto_detect", "X(1)")])
def test_the_demo_without_cookies_stays_logged_in_through_the_url(
    request: pytest.FixtureRequest, cookies_blocked: Any, site: str, flag: str | None
) -> None:
    page = cookies_blocked.new_page()
    page.goto(request.getfixturevalue(site) + "/")  # a stranger is sent to the login form
    before_login = KEYED.search(page.url)  # the form's CSRF secret started a session
    assert before_login, page.url
    demo_log_in(page)
    match = KEYED.search(page.url)
    assert match and match.group(1) != before_login.group(1), page.url  # rotated on login
    urls = demo_tour(page)
    keys = [(m.group(1), m.group(2)) if (m := KEYED.search(url)) else None for url in urls]
    assert keys == [(match.group(1), flag)] * len(TOUR), urls
    assert page.inner_text("h1") == "Welcome back, Ada"
    assert session_key_shown(page) == match.group(1)
    assert cookies_blocked.cookies() == []


def test_the_demo_with_cookies_under_autodetect_uses_a_cookie_and_clean_urls(
    demo_auto_detect: str, cookies_allowed: Any
) -> None:
    page = cookies_allowed.new_page()
    page.goto(demo_auto_detect + "/")

    def session_cookie() -> str:
        values = [c["value"] for c in cookies_allowed.cookies() if c["name"] == "sessionid"]
        assert len(values) == 1, cookies_allowed.cookies()
        return str(values[0])

    before_login = session_cookie()  # the form's CSRF secret started a session
    demo_log_in(page)
    urls = [page.url, *demo_tour(page)]
    assert all("(" not in url and PROBE not in url for url in urls), urls
    key = session_cookie()
    assert key != before_login  # rotated on login
    assert page.inner_text("h1") == "Welcome back, Ada"
    assert session_key_shown(page) == key


def test_the_demo_sends_a_stranger_on_the_tour_to_the_login_form(
    demo_use_uri: str, cookies_blocked: Any
) -> None:
    page = cookies_blocked.new_page()
    page.goto(demo_use_uri + "/tour/3/")
    assert page.inner_text("h1") == "Log in"
    assert KEYED.search(page.url) and page.url.endswith("/login/"), page.url
    assert page.goto(demo_use_uri + "/tour/6/").status == 404  # five pages, no more


@pytest.mark.parametrize("mode", ["UseUri", "AutoDetect"])
def test_the_cookieless_demo_passes_every_system_check(mode: str, tmp_path: Path) -> None:
    command = [sys.executable, "manage.py", "check", "--fail-level", "WARNING"]
    env = demo_env(**cookieless_env(mode, tmp_path))
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout
