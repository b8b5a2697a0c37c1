"""The demo site (testproject) through Django's test client, and scripts/demo.sh for real.

The pages run under tests.settings with the demo's URLs, templates and middleware swapped in.
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any, ClassVar

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.test import AsyncClient, Client
from django.utils.html import escape

from django_statemodes.backends.inproc import SessionStore as InProcStore
from django_statemodes.core.locking import lock_stats
from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.exceptions import SessionValueError
from django_statemodes.providers.base import SessionStateProvider
from django_statemodes.providers.inproc import InProcProvider
from testproject import settings as demo
from testproject.views import (
    DJANGO_SESSION_HEADER,
    LOCK_COUNTERS,
    PARALLEL_REQUESTS,
    StudentInfo,
)
from tests.conftest import free_port
from tests.demo_site import demo_env, running_demo

ROOT = Path(__file__).resolve().parent.parent
COOKIE = django_settings.SESSION_COOKIE_NAME


class SerializingProvider(InProcProvider):
    """InProc's store holding serialized bytes, as every out-of-process mode does."""

    stores_objects: ClassVar[bool] = False


class SessionStore(StateModeSessionBase):
    """This module is also an engine (``SESSION_ENGINE = "tests.test_demo"``): it serializes."""

    @classmethod
    def create_provider(cls) -> SessionStateProvider:
        return SerializingProvider()


@pytest.fixture(autouse=True)
def demo_site(settings: Any) -> None:
    settings.ROOT_URLCONF = "testproject.urls"
    settings.TEMPLATES = demo.TEMPLATES
    settings.MIDDLEWARE = demo.MIDDLEWARE
    settings.STATEMODES_LOCK_WAITING_THREADS = demo.STATEMODES_LOCK_WAITING_THREADS


@pytest.fixture
def client() -> Client:
    return Client()


def log_in(client: Client, name: str = "Ada") -> str:
    response = client.post("/login/", {"name": name})
    assert response.status_code == 302
    assert response["Location"] == "/"
    return client.cookies[COOKIE].value


def stored(session_key: str) -> dict[str, Any]:
    """Read a session straight from the InProc store, outside any request."""
    return dict(InProcStore(session_key).items())


# Login, welcome, logout.


def test_the_main_page_redirects_to_login_without_a_name(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/login/"
    assert COOKIE not in response.cookies


def test_logging_in_stores_the_name_and_the_main_page_welcomes_it_back(client: Client) -> None:
    key = log_in(client, "Ada <Lovelace>")
    response = client.get("/")
    assert response.status_code == 200
    assert "Welcome back, Ada &lt;Lovelace&gt;" in response.text
    assert stored(key)["user_name"] == "Ada <Lovelace>"


def test_logging_in_cycles_the_session_key_and_keeps_the_data(client: Client) -> None:
    client.get("/counter/")
    before = client.cookies[COOKIE].value
    after = log_in(client)
    assert after != before
    assert stored(before) == {}
    assert stored(after) == {"counter": 0, "user_name": "Ada"}


def test_logging_in_needs_the_csrf_token() -> None:
    client = Client(enforce_csrf_checks=True)
    assert client.post("/login/", {"name": "Ada"}).status_code == 403
    form = client.get("/login/").text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token is not None
    response = client.post("/login/", {"name": "Ada", "csrfmiddlewaretoken": token[1]})
    assert response.status_code == 302


def test_an_empty_name_is_refused_with_the_form_again(client: Client) -> None:
    response = client.post("/login/", {"name": "  "})
    assert response.status_code == 200
    assert "This field is required." in response.text
    assert client.get("/").status_code == 302


def test_logging_out_flushes_the_session(client: Client) -> None:
    key = log_in(client)
    asked = client.get("/logout/")  # the navigation bar's link: a form, nothing changed yet
    assert asked.status_code == 200
    assert '<form method="post" action="/logout/">' in asked.text
    assert stored(key) == {"user_name": "Ada"}
    response = client.post("/logout/")
    assert response.status_code == 302
    assert response["Location"] == "/login/"
    assert stored(key) == {}
    assert client.get("/")["Location"] == "/login/"


def visitor_bar(page: str) -> str:
    match = re.search(r'<span class="visitor" id="visitor"[^>]*>(.*?)</span>', page, re.DOTALL)
    assert match is not None
    return match[1]


def test_the_navigation_offers_log_in_before_and_log_out_after_logging_in(
    client: Client,
) -> None:
    stranger = visitor_bar(client.get("/login/").text)
    assert stranger == '<a href="/login/" aria-current="page">Log in</a>'
    log_in(client, "Ada")
    for url in ["/", "/tour/1/", "/student/", "/counter/", "/read-only/", "/status/"]:
        bar = visitor_bar(client.get(url).text)
        assert "signed in as <strong>Ada</strong>" in bar, url
        assert '<a href="/logout/">Log out</a>' in bar and "Log in" not in bar, url
    client.post("/logout/")
    assert "Log in" in visitor_bar(client.get("/login/").text)


def test_the_navigation_of_a_disabled_page_does_not_read_the_session(client: Client) -> None:
    key = log_in(client)
    locked_before = lock_stats.as_dict()["acquired"]
    response = client.get("/disabled/")
    assert "this page does not read the session" in visitor_bar(response.text)
    assert lock_stats.as_dict()["acquired"] == locked_before
    assert COOKIE not in response.cookies
    assert stored(key) == {"user_name": "Ada"}


def test_every_page_has_a_favicon_and_favicon_ico_answers_without_a_session(
    client: Client,
) -> None:
    page = client.get("/login/").text
    assert '<link rel="icon" type="image/svg+xml" href="data:image/svg+xml,%3Csvg' in page
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert response.content.startswith(b"<svg")
    assert COOKIE not in response.cookies


# StudentInfo.


def test_a_student_info_round_trips_as_a_live_object_under_inproc(client: Client) -> None:
    response = client.post("/student/", {"action": "store", "roll_number": "42", "name": "Grace"})
    assert response.status_code == 302
    key = client.cookies[COOKIE].value
    assert stored(key)["student"] == StudentInfo(roll_number=42, name="Grace")
    page = client.get("/student/").text
    assert '<strong class="roll-number">42</strong>' in page
    assert '<strong class="student-name">Grace</strong>' in page
    assert "the same live StudentInfo object" in page


def test_a_student_info_is_stored_as_a_dict_where_the_session_is_serialized(
    client: Client, settings: Any
) -> None:
    settings.SESSION_ENGINE = "tests.test_demo"
    client.post("/student/", {"action": "store", "roll_number": "7", "name": "Alan"})
    key = client.cookies[COOKIE].value
    payload = SessionStore.get_provider().get(key)
    assert payload is not None
    assert b'"student":{"roll_number":7,"name":"Alan"}' in payload.data  # JSON, not pickle
    page = client.get("/student/").text
    assert '<strong class="roll-number">7</strong>' in page
    assert "a dict, rebuilt into a StudentInfo" in page


def test_storing_the_dataclass_itself_where_the_session_is_serialized_fails_at_once(
    settings: Any,
) -> None:
    settings.SESSION_ENGINE = "tests.test_demo"
    with pytest.raises(SessionValueError, match="'student'"):
        SessionStore(access="ReadWrite")["student"] = StudentInfo(roll_number=1, name="Ada")


@pytest.mark.redis
@pytest.mark.usefixtures("redis_server")
def test_a_student_info_round_trips_through_redis(client: Client, settings: Any) -> None:
    settings.CACHES = {
        **settings.CACHES,
        "demo-redis": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:6379/14",
        },
    }
    settings.SESSION_ENGINE = "django_statemodes.backends.custom"
    settings.STATEMODES_CUSTOM_PROVIDER = "django_statemodes.providers.redis.RedisProvider"
    settings.STATEMODES_REDIS_ALIAS = "demo-redis"
    client.post("/student/", {"action": "store", "roll_number": "3", "name": "Edsger"})
    page = client.get("/student/").text
    assert '<strong class="student-name">Edsger</strong>' in page
    assert "a dict, rebuilt into a StudentInfo" in page
    client.post("/logout/")


def test_an_invalid_student_info_is_refused_and_nothing_is_stored(client: Client) -> None:
    response = client.post("/student/", {"action": "store", "roll_number": "-1", "name": "X"})
    assert response.status_code == 200
    assert "greater than or equal to 1" in response.text
    assert COOKIE not in response.cookies


def test_forgetting_the_student_info_removes_it(client: Client) -> None:
    client.post("/student/", {"action": "store", "roll_number": "1", "name": "Barbara"})
    client.post("/student/", {"action": "forget"})
    assert "student" not in stored(client.cookies[COOKIE].value)
    assert "No StudentInfo in the session yet" in client.get("/student/").text


# Status, read-only and disabled pages.


def test_the_status_page_shows_the_mode_the_key_the_expiry_and_the_lock_counters(
    client: Client,
) -> None:
    key = log_in(client)
    page = client.get("/status/").text
    assert f'<td class="key" id="session-key">{key}</td>' in page
    assert "InProc" in page
    assert "django_statemodes.backends.inproc" in page
    assert f"({django_settings.SESSION_COOKIE_AGE} s from now, sliding)" in page
    acquired = int(lock_stats.as_dict()["acquired"])
    assert f'<td id="lock-acquired">{acquired}</td>' in page


def test_the_status_page_says_what_each_lock_counter_counts(client: Client) -> None:
    page = client.get("/status/").text
    assert set(LOCK_COUNTERS) == set(lock_stats.as_dict())  # none shown without its meaning
    for name, meaning in LOCK_COUNTERS.items():
        assert f"<th><code>{name}</code></th><td>{escape(meaning)}</td>" in page
    # refused_writes counts saves refused after a broken lock, not the ReadOnly view's 409s.
    refused = int(lock_stats.as_dict()["refused_writes"])
    client.get("/counter/")
    assert client.post("/counter/read-only-increment/").status_code == 409
    assert lock_stats.as_dict()["refused_writes"] == refused
    assert "lock had been broken" in LOCK_COUNTERS["refused_writes"]


def test_the_status_page_says_when_there_is_no_session_yet(client: Client) -> None:
    response = client.get("/status/")
    assert "(no session yet)" in response.text
    assert COOKIE not in response.cookies


def test_the_read_only_page_shows_the_data_and_the_refused_write(client: Client) -> None:
    key = log_in(client)
    before = stored(key)
    response = client.get("/read-only/")
    assert "<th>user_name</th><td><code>Ada</code></td>" in response.text
    assert "SessionStateReadOnly" in response.text
    assert "The session is read-only in this request" in response.text
    assert COOKIE not in response.cookies  # nothing saved, so no new cookie
    assert stored(key) == before


def test_the_disabled_page_sets_no_cookie_and_explains_itself(client: Client) -> None:
    response = client.get("/disabled/")
    assert response.status_code == 200
    assert "SessionStateDisabled" in response.text
    assert "Session state is disabled for this request" in response.text
    assert COOKIE not in response.cookies
    assert "Cookie" not in response.get("Vary", "")


def test_the_disabled_page_leaves_an_existing_session_alone(client: Client) -> None:
    key = log_in(client)
    response = client.get("/disabled/")
    assert COOKIE not in response.cookies
    assert stored(key) == {"user_name": "Ada"}


def test_with_csrf_in_the_session_a_disabled_page_leaves_no_lock_behind(
    client: Client, settings: Any
) -> None:
    # Cookieless sites keep the CSRF secret in the session: Django's CSRF middleware then loads
    # the session before the view's mode is known. The lock it took must not outlive the request.
    settings.CSRF_USE_SESSIONS = True
    settings.STATEMODES_LOCK_TIMEOUT = 5  # a leaked lock would be broken after this long
    key = log_in(client)
    waited = lock_stats.as_dict()["waited"]
    for url in ["/disabled/", "/read-only/", "/status/"]:
        assert client.get(url).status_code == 200
        item = InProcStore.get_provider().get(key)
        assert item is not None and item.locked is False, url
    assert lock_stats.as_dict()["waited"] == waited


def test_under_asgi_a_disabled_page_also_leaves_no_lock_behind(settings: Any) -> None:
    settings.CSRF_USE_SESSIONS = True
    settings.STATEMODES_LOCK_TIMEOUT = 5
    client = AsyncClient()

    async def visit() -> tuple[str, list[bool]]:
        response = await client.post("/login/", {"name": "Ada"})
        key = response.cookies[COOKIE].value
        locked = []
        for url in ["/disabled/", "/read-only/"]:
            assert (await client.get(url)).status_code == 200
            item = InProcStore.get_provider().get(key)
            locked.append(item is None or item.locked)
        return key, locked

    key, locked = async_to_sync(visit)()
    assert locked == [False, False]
    assert stored(key)["user_name"] == "Ada"


# The parallel counter.


def test_the_counter_page_creates_the_session_the_increments_share(client: Client) -> None:
    response = client.get("/counter/")
    assert '<strong id="initial">0</strong>' in response.text
    assert stored(client.cookies[COOKIE].value) == {"counter": 0}


def test_the_increment_endpoint_increments(client: Client) -> None:
    client.get("/counter/")
    assert [client.post("/counter/increment/").json()["counter"] for _ in range(3)] == [1, 2, 3]
    assert client.get("/counter/value/").json() == {"counter": 3}
    assert client.get("/counter/increment/").status_code == 405


def test_parallel_increments_of_one_session_lose_no_update(client: Client) -> None:
    client.get("/counter/")
    answers = parallel_increments("/counter/increment/", client.cookies[COOKIE].value, {})
    assert sorted(answers) == list(range(1, PARALLEL_REQUESTS + 1))
    assert client.get("/counter/value/").json() == {"counter": PARALLEL_REQUESTS}


def parallel_increments(url: str, cookie: str, headers: dict[str, str]) -> list[int]:
    """PARALLEL_REQUESTS increments released at once by a barrier; the counters they answer."""
    start = threading.Barrier(PARALLEL_REQUESTS)
    answers: list[int] = []

    def increment() -> None:
        own = Client(headers=headers)
        own.cookies[COOKIE] = cookie
        start.wait()
        answers.append(own.post(url).json()["counter"])

    threads = [threading.Thread(target=increment) for _ in range(PARALLEL_REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == PARALLEL_REQUESTS
    return answers


def test_the_same_increments_lose_updates_in_djangos_engine_and_none_in_ours(
    client: Client,
) -> None:
    page = client.get("/counter/").text
    match = re.search(rf'"{DJANGO_SESSION_HEADER}": "([a-z0-9]+)"', page)
    assert match is not None
    theirs = {DJANGO_SESSION_HEADER: match[1]}
    cookie = client.cookies[COOKIE].value

    ours = parallel_increments("/counter/increment/", cookie, {})
    assert sorted(ours) == list(range(1, PARALLEL_REQUESTS + 1))
    assert client.get("/counter/value/").json() == {"counter": PARALLEL_REQUESTS}

    # Django's cache engine: requests that read the counter inside one another's 50 ms of work
    # write the same value. 20 requests released by one barrier all read before any writes.
    answered = parallel_increments("/counter/django/increment/", cookie, theirs)
    final = client.get("/counter/django/value/", headers=theirs).json()["counter"]
    assert final in answered  # the last save wins, whatever the others wrote
    assert len(set(answered)) < PARALLEL_REQUESTS  # duplicates: lost updates
    assert final < PARALLEL_REQUESTS
    # Reset puts both at 0.
    assert client.post("/counter/reset/").json() == {"counter": 0}
    assert client.post("/counter/django/reset/", headers=theirs).json() == {"counter": 0}
    assert client.get("/counter/django/value/", headers=theirs).json() == {"counter": 0}


@pytest.mark.parametrize("key", ["", "nosuchsession0000000000000000000", "../../etc", "x" * 500])
def test_djangos_counter_with_an_unknown_session_is_a_clear_404(client: Client, key: str) -> None:
    client.get("/counter/")
    headers = {DJANGO_SESSION_HEADER: key}
    for response in [
        client.post("/counter/django/increment/", headers=headers),
        client.get("/counter/django/value/", headers=headers),
        client.post("/counter/django/reset/", headers=headers),
    ]:
        assert response.status_code == 404
        assert "reload" in response.json()["error"]


def test_an_increment_at_the_read_only_endpoint_is_refused_loudly(client: Client) -> None:
    client.get("/counter/")
    client.post("/counter/increment/")
    response = client.post("/counter/read-only-increment/")
    assert response.status_code == 409
    assert "read-only" in response.json()["error"]
    assert client.get("/counter/value/").json() == {"counter": 1}


def test_resetting_the_counter_sets_it_to_zero(client: Client) -> None:
    client.get("/counter/")
    client.post("/counter/increment/")
    assert client.post("/counter/reset/").json() == {"counter": 0}
    assert client.get("/counter/value/").json() == {"counter": 0}


def test_the_cookieless_explainer_shows_only_where_the_key_is_in_the_url(
    client: Client, settings: Any
) -> None:
    log_in(client)
    assert 'id="cookieless-explainer"' not in client.get("/tour/1/").text  # cookies

    settings.STATEMODES_COOKIELESS = "UseUri"
    settings.CSRF_USE_SESSIONS = True
    cookieless = Client()
    response = cookieless.post("/login/", {"name": "Ada"})
    prefix = re.match(r"^/\(S\([a-z0-9]+\)\)/$", response["Location"])
    assert prefix is not None, response["Location"]
    page = cookieless.get(prefix[0] + "tour/1/").text
    assert "Page 1 of 5" in page
    assert 'id="cookieless-explainer"' in page
    assert 'STATEMODES_COOKIELESS = "UseUri"' in page


# Off mode.


def test_in_off_mode_the_pages_explain_instead_of_failing(client: Client, settings: Any) -> None:
    settings.SESSION_ENGINE = "django_statemodes.backends.off"
    for url in ["/", "/student/", "/read-only/", "/counter/"]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert "Session state is off for this site" in response.text, url
    status = client.get("/status/").text
    assert "Session state is off for this site" in status
    assert 'id="lock-acquired"' in status
    assert COOKIE not in client.cookies


# The settings' environment variables.


def demo_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    """Evaluate testproject/settings.py afresh under the given environment."""
    for name in list(os.environ):
        if name.startswith("STATEMODES_DEMO_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "testproject" / "settings.py"))


@pytest.mark.parametrize(
    ("engine", "session_engine"),
    [
        ("inproc", "django_statemodes.backends.inproc"),
        ("stateserver", "django_statemodes.backends.stateserver"),
        ("sql", "django_statemodes.backends.sql"),
        ("redis", "django_statemodes.backends.custom"),
        ("off", "django_statemodes.backends.off"),
    ],
)
def test_the_engine_variable_picks_the_session_engine(
    monkeypatch: pytest.MonkeyPatch, engine: str, session_engine: str
) -> None:
    assert demo_settings(monkeypatch, STATEMODES_DEMO_ENGINE=engine)["SESSION_ENGINE"] == (
        session_engine
    )


def test_the_defaults_are_inproc_on_sqlite_with_cookies_and_debug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = demo_settings(monkeypatch)
    assert values["SESSION_ENGINE"] == "django_statemodes.backends.inproc"
    assert values["DATABASES"]["default"]["NAME"] == ROOT / "testproject" / "demo.sqlite3"
    assert values["DEBUG"] is True
    assert "STATEMODES_COOKIELESS" not in values
    assert "CSRF_USE_SESSIONS" not in values
    assert values["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1", "[::1]"]
    assert values["MIDDLEWARE"][1] == "django_statemodes.middleware.SessionStateMiddleware"
    assert "django.contrib.sessions.middleware.SessionMiddleware" not in values["MIDDLEWARE"]


def test_redis_mode_is_custom_mode_with_the_redis_provider_on_db_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = demo_settings(monkeypatch, STATEMODES_DEMO_ENGINE="redis")
    assert values["STATEMODES_CUSTOM_PROVIDER"] == "django_statemodes.providers.redis.RedisProvider"
    assert values["STATEMODES_REDIS_ALIAS"] == "sessions"  # not a cache alias (W060)
    assert values["CACHES"]["sessions"] == {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:6379/1",
    }


def test_postgres_can_be_chosen_for_the_database(monkeypatch: pytest.MonkeyPatch) -> None:
    values = demo_settings(monkeypatch, STATEMODES_DEMO_DATABASE="postgres")
    database = values["DATABASES"]["default"]
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert database["HOST"] == "127.0.0.1"


def test_cookieless_keeps_the_csrf_secret_in_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    values = demo_settings(monkeypatch, STATEMODES_DEMO_COOKIELESS="UseUri")
    assert values["STATEMODES_COOKIELESS"] == "UseUri"
    assert values["CSRF_USE_SESSIONS"] is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STATEMODES_DEMO_ENGINE", "memcached"),
        ("STATEMODES_DEMO_DATABASE", "mysql"),
        ("STATEMODES_DEMO_COOKIELESS", "yes"),
    ],
)
def test_a_wrong_value_is_a_clear_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=f"{name} is '{value}'"):
        demo_settings(monkeypatch, **{name: value})


def test_debug_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert demo_settings(monkeypatch, STATEMODES_DEMO_DEBUG="0")["DEBUG"] is False


# scripts/demo.sh, the README's demo command, for real.


CSRF_TOKEN = re.compile(r'name="(?:csrfmiddlewaretoken" value|csrf-token" content)="([^"]+)"')
COOKIELESS_PREFIX = re.compile(r"^(https?://[^/]+/\(S\([a-z0-9]+\)\))/")


class Browser:
    """An HTTP client of the running demo that keeps cookies, or the cookieless URL prefix.

    urllib follows redirects; POSTs carry the CSRF token of the last page, as the pages' forms
    and fetch() calls do.
    """

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))
        self.token = ""

    def cookie(self, name: str) -> str:
        return next((cookie.value or "" for cookie in self.cookies if cookie.name == name), "")

    def request(self, path: str, data: dict[str, str] | None = None) -> tuple[int, str]:
        body = None if data is None else urllib.parse.urlencode(data).encode()
        request = urllib.request.Request(self.base + path, data=body)
        if data is not None:
            request.add_header("X-CSRFToken", self.token)
        try:
            with self.opener.open(request, timeout=30) as response:
                status, url, page = response.status, response.url, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        prefix = COOKIELESS_PREFIX.match(url)
        if prefix:  # UseUri: the key lives in the URL, /(S(key))/
            self.base = prefix[1]
        token = CSRF_TOKEN.search(page)
        if token:
            self.token = token[1]
        return status, page

    def session_key(self) -> str:
        prefix = re.search(r"/\(S\(([a-z0-9]+)\)\)$", self.base)
        return prefix[1] if prefix else self.cookie(COOKIE)

    def wait_until_up(self, timeout: float = 60) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.request("/")
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)


@pytest.mark.slow
def test_the_demo_command_serves_the_site(tmp_path: Path) -> None:
    with running_demo(env={"STATEMODES_DEMO_SQLITE": str(tmp_path / "demo.sqlite3")}) as url:
        status, page = Browser(url).wait_until_up()
    assert status == 200
    assert "<h1>Log in</h1>" in page  # / redirects to the login page
    assert "mode: <strong>InProc</strong>" in page


def walk_through(browser: Browser, cookieless: bool = False) -> None:
    """Every scenario of the demo, over HTTP, as a visitor of the running site."""
    status, page = browser.wait_until_up()
    assert (status, "<h1>Log in</h1>" in page) == (200, True)
    status, page = browser.request("/login/", {"name": "Ada"})
    assert (status, "Welcome back, Ada" in page) == (200, True)
    assert "signed in as <strong>Ada</strong>" in page
    status, page = browser.request("/tour/1/")
    assert (status, "Page 1 of 5" in page) == (200, True)
    assert ('id="cookieless-explainer"' in page) == cookieless

    status, page = browser.request(
        "/student/", {"action": "store", "roll_number": "42", "name": "Grace"}
    )
    assert '<strong class="roll-number">42</strong>' in page
    assert '<strong class="student-name">Grace</strong>' in page

    browser.request("/counter/")  # stores the counter: the parallel requests share its session
    start = threading.Barrier(PARALLEL_REQUESTS)
    statuses: list[int] = []

    def increment() -> None:
        start.wait()
        statuses.append(browser.request("/counter/increment/", {})[0])

    threads = [threading.Thread(target=increment) for _ in range(PARALLEL_REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == [200] * PARALLEL_REQUESTS
    assert browser.request("/counter/value/")[1] == f'{{"counter": {PARALLEL_REQUESTS}}}'

    assert "The session is read-only in this request" in browser.request("/read-only/")[1]
    assert f'id="session-key">{browser.session_key()}</td>' in browser.request("/status/")[1]
    status, page = browser.request("/logout/", {})
    assert (status, "<h1>Log in</h1>" in page) == (200, True)
    assert "Welcome back" not in browser.request("/")[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("engine", "mode", "restored"),
    [
        ("inproc", "InProc", "the same live StudentInfo object"),
        ("sql", "SQLServer", "a dict, rebuilt into a StudentInfo"),
        ("stateserver", "StateServer", "a dict, rebuilt into a StudentInfo"),
        pytest.param(
            "redis",
            "Custom",
            "a dict, rebuilt into a StudentInfo",
            marks=pytest.mark.redis,
        ),
    ],
)
def test_every_scenario_works_in_every_mode_of_the_demo(
    request: pytest.FixtureRequest, tmp_path: Path, engine: str, mode: str, restored: str
) -> None:
    if engine == "redis":
        request.getfixturevalue("redis_server")  # skips (or fails in CI) without Redis
    env = {
        "STATEMODES_DEMO_ENGINE": engine,
        "STATEMODES_DEMO_SQLITE": str(tmp_path / "demo.sqlite3"),
        "STATEMODES_DEMO_STATE_PORT": str(free_port()),
        "STATEMODES_DEMO_REDIS_URL": "redis://127.0.0.1:6379/14",
    }
    with running_demo("--noreload", env=env) as url:
        browser = Browser(url)
        walk_through(browser)
        assert f"mode: <strong>{mode}</strong>" in browser.request("/status/")[1]
        browser.request("/login/", {"name": "Ada"})
        browser.request("/student/", {"action": "store", "roll_number": "1", "name": "Kay"})
        assert restored in browser.request("/student/")[1]


@pytest.mark.slow
def test_every_scenario_works_without_cookies_in_the_cookieless_demo(tmp_path: Path) -> None:
    env = {
        "STATEMODES_DEMO_COOKIELESS": "UseUri",
        "STATEMODES_DEMO_SQLITE": str(tmp_path / "demo.sqlite3"),
    }
    with running_demo("--noreload", env=env) as url:
        browser = Browser(url)
        walk_through(browser, cookieless=True)
        assert "/(S(" in browser.base
        assert list(browser.cookies) == []  # neither a session nor a CSRF cookie


def test_the_demo_command_refuses_a_non_loopback_address() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "demo.sh"), "0.0.0.0:8000"],
        cwd=ROOT,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "loopback only" in result.stderr
