"""The demo's counter page and navigation in a real headless Chromium: the page's own script
runs the 20 parallel increments through both engines, as a visitor's click does."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from testproject.views import PARALLEL_REQUESTS
from tests.demo_site import running_demo

# Playwright and browser contexts with cookies allowed or blocked, as the cookieless tests use.
from tests.test_browser_cookieless import (  # noqa: F401
    cookies_allowed,
    cookies_blocked,
    demo_log_in,
    playwright,
    serve_demo,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo_with_cookies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"STATEMODES_DEMO_SQLITE": str(tmp_path_factory.mktemp("demo") / "demo.sqlite3")}
    if sys.prefix != sys.base_prefix:
        env["VENV"] = sys.prefix  # the demo runs in the tests' virtualenv, not a new .venv
    with running_demo("--noreload", env=env, wait=120) as site:
        yield site


@pytest.fixture(scope="module")
def demo_without_cookies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_demo("UseUri", tmp_path_factory.mktemp("demo-useuri-counter")) as site:
        yield site


def compare_engines(page: Any) -> dict[str, str]:
    """Click the counter page's comparison button; return its table, cell id -> text."""
    with page.expect_navigation():
        page.get_by_role("link", name="Parallel counter", exact=True).click()
    page.click("#compare")
    page.wait_for_selector("#tally", state="visible", timeout=60_000)
    cells = page.locator("#tally td[id]")
    return {
        cells.nth(i).get_attribute("id"): cells.nth(i).inner_text() for i in range(cells.count())
    }


@pytest.mark.parametrize(
    ("site", "context"),
    [("demo_with_cookies", "cookies_allowed"), ("demo_without_cookies", "cookies_blocked")],
)
def test_the_counter_page_shows_djangos_engine_losing_what_ours_keeps(
    request: pytest.FixtureRequest, site: str, context: str
) -> None:
    page = request.getfixturevalue(context).new_page()
    page.goto(request.getfixturevalue(site) + "/")
    demo_log_in(page)
    table = compare_engines(page)
    assert table["ours-answered"] == table["theirs-answered"] == str(PARALLEL_REQUESTS)
    assert table["ours-failed"] == table["theirs-failed"] == "0"
    assert table["ours-before"] == "0" and table["ours-after"] == str(PARALLEL_REQUESTS)
    assert table["ours-lost"] == "0"
    # The browser's own concurrency (a few connections per site) still overlaps the requests'
    # 50 ms windows: Django's engine loses updates, and the table adds up.
    lost = int(table["theirs-lost"])
    assert lost > 0
    assert int(table["theirs-after"]) == PARALLEL_REQUESTS - lost
    assert re.fullmatch(
        rf"django-statemodes lost 0 of {PARALLEL_REQUESTS} updates; "
        rf"Django's own engine lost {lost}\.",
        page.inner_text("#result"),
    )
    # The ReadOnly view refuses every write, loudly, and the counter stays.
    page.click("#fire-read-only")
    page.wait_for_selector("#read-only-tally", state="visible")
    assert page.inner_text("#read-only-refused") == f"{PARALLEL_REQUESTS} of {PARALLEL_REQUESTS}"
    assert page.inner_text("#read-only-counter") == f"{PARALLEL_REQUESTS} → {PARALLEL_REQUESTS}"
    assert "read-only" in page.inner_text("#read-only-error")


def test_the_navigation_logs_in_and_out(
    request: pytest.FixtureRequest, demo_with_cookies: str
) -> None:
    page = request.getfixturevalue("cookies_allowed").new_page()
    icons: list[str] = []
    page.on("request", lambda r: icons.append(r.url) if "favicon" in r.url else None)
    page.goto(demo_with_cookies + "/")
    assert page.inner_text("#visitor") == "Log in"
    demo_log_in(page)
    assert page.inner_text("#visitor") == "signed in as Ada · Log out"
    with page.expect_navigation():
        page.get_by_role("link", name="Log out", exact=True).click()
    assert page.inner_text("h1") == "Log out"
    with page.expect_navigation():
        page.locator("main form button").click()
    assert page.inner_text("h1") == "Log in"
    assert page.inner_text("#visitor") == "Log in"
    assert icons == []  # the favicon is inline: the browser never asks for /favicon.ico
