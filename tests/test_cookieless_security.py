"""Attacks on cookieless URLs (issue 14): open redirects and session fixation.

Every redirect the package makes must stay on the site, whatever path the attacker sends
(Django's rule for redirect targets: ``url_has_allowed_host_and_scheme``; Django's own
``CommonMiddleware`` escapes leading slashes for the same reason, CVE-2018-14574). A key in a
URL that the store does not hold is never adopted and never stored (Django's rule since
CVE-2015-5143), and ``X(1)`` in a link never overrides the session a browser proves by cookie.

Django's test client first, then the same attacks on a real gunicorn process, which hands the
raw request-target to Django as a real attacker's request would reach it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import pytest
from django.conf import settings
from django.test import AsyncClient, Client
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme

from django_statemodes.backends.inproc import SessionStore
from django_statemodes.cookieless import PROBE
from tests.cookielessapp.serving import serve
from tests.test_cookieless_middleware import SEGMENT, UNKNOWN, CookielessClient, key_of, stored

pytestmark = pytest.mark.django_db

HOST = "testserver"
#: What attackers send as a path: protocol-relative (``//``), a backslash that browsers read as
#: a slash, encoded slashes that the server decodes, three slashes, and schemes (the last one
#: as a PATH_INFO without its leading slash, as a careless server could pass an absolute-form
#: request-target).
TARGETS = [
    "//evil.example/",
    "/\\evil.example/",
    "/%2F%2Fevil.example/",
    "///evil.example",
    "/https://evil.example/",
    "https://evil.example/",
]
#: S(...) values an attacker may plant: well formed but unknown, and malformed ones.
BOGUS = [UNKNOWN, "short", UNKNOWN.upper(), UNKNOWN[:31] + "-"]


def off_site(location: str, host: str = HOST) -> bool:
    """True if a browser following ``location`` from this site would leave it."""
    if not url_has_allowed_host_and_scheme(location, allowed_hosts={host}):
        return True
    # WHATWG URL parsing (every browser) reads "\" as "/" in http(s) URLs.
    target = urlsplit(urljoin(f"http://{host}/a/b/", location.replace("\\", "/")))
    return target.netloc != host


def path_info(target: str, prefix: str = "") -> str:
    """The PATH_INFO a WSGI server hands Django for ``target`` (percent-decoded)."""
    decoded = unquote(target)
    if prefix and not decoded.startswith("/"):
        decoded = "/" + decoded
    return prefix + decoded


def send(client: Client, target: str, *, prefix: str = "", query: str = "") -> Any:
    # PATH_INFO is set directly: the test client would read "//evil.example/" as a host.
    url = f"/?{query}" if query else "/"
    return client.get(url, PATH_INFO=path_info(target, prefix))


def assert_on_site(response: Any, host: str = HOST) -> None:
    """A redirect stays on the site (a 400, or no redirect at all, is safe too)."""
    if response.has_header("Location"):
        assert not off_site(response["Location"], host), response["Location"]


@pytest.fixture
def site(settings: Any) -> Any:
    from tests.cookielessapp import site_settings

    for name, value in site_settings("UseUri").items():
        setattr(settings, name, value)
    settings.ROOT_URLCONF = "tests.cookielessapp.anyurls"
    return settings


@pytest.fixture
def auto(site: Any) -> Any:
    site.STATEMODES_COOKIELESS = "AutoDetect"
    return site


@pytest.fixture
def stored_key(site: Any) -> Iterator[str]:
    key = key_of(CookielessClient().get("/put/?value=mine")["Location"])
    yield key
    SessionStore().delete(key)


def cookie_client() -> tuple[Client, str]:
    """A browser that keeps cookies, through AutoDetect's probe, with a stored cookie session."""
    client = Client()
    response = client.get("/put/?value=own", follow=True)
    assert response.status_code == 200
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert stored(key) == {"put": "own"}
    return client, key


# 1. Every redirect the package makes stays on the site.


@pytest.mark.parametrize("target", TARGETS)
def test_the_autodetect_probe_stays_on_the_site(auto: Any, target: str) -> None:
    response = send(Client(), target, query="a=1")
    assert_on_site(response)


@pytest.mark.parametrize("target", TARGETS)
def test_the_autodetect_probe_passed_step_stays_on_the_site(auto: Any, target: str) -> None:
    client = Client()
    client.cookies[PROBE] = "1"
    response = send(client, target, query=f"a=1&{PROBE}=1")
    assert_on_site(response)


@pytest.mark.parametrize("target", TARGETS)
def test_inserting_a_new_key_stays_on_the_site(site: Any, target: str) -> None:
    response = send(CookielessClient(), target, query="do=put")
    assert_on_site(response)
    if target.startswith("/"):  # Django resolves only paths: the view ran and stored a session
        assert response.status_code == 302
        key_of(response["Location"])


@pytest.mark.parametrize("target", TARGETS)
def test_removing_the_key_after_a_logout_stays_on_the_site(
    site: Any, stored_key: str, target: str
) -> None:
    response = send(CookielessClient(), target, prefix=f"/(S({stored_key}))", query="do=leave")
    assert_on_site(response)
    assert not SEGMENT.search(response["Location"])


@pytest.mark.parametrize("target", TARGETS)
def test_removing_an_unknown_key_stays_on_the_site(site: Any, target: str) -> None:
    response = send(CookielessClient(), target, prefix=f"/(S({UNKNOWN}))")
    assert_on_site(response)


# 2. Fixation: a planted key is never stored nor adopted.


def attacker_keys(response: Any, planted: str) -> set[str]:
    """Every key the attacker learns from the answer to the planted link."""
    keys = {planted}
    if response.has_header("Location"):
        keys.update(match.group(1) for match in SEGMENT.finditer(response["Location"]))
    return keys


def assert_nothing_stored(keys: set[str]) -> None:
    provider = SessionStore.get_provider()
    for key in keys:
        assert provider.get(key) is None, f"a record was stored under {key!r}"


@pytest.mark.parametrize("planted", BOGUS)
def test_a_bogus_key_is_never_stored_and_the_victim_never_joins_it(site: Any, planted: str) -> None:
    attacker = CookielessClient()
    response = attacker.get(f"/(S({planted}))/touch/")
    known = attacker_keys(response, planted)
    assert_nothing_stored(known)
    # The attacker sends the victim the best link they have: the one they were redirected to.
    link = response["Location"] if response.status_code == 302 else f"/(S({planted}))/touch/"
    segment = SEGMENT.search(link)
    prefix = link[: segment.end() - 1] if segment else f"/(S({planted}))"
    victim = CookielessClient()
    response = victim.get(f"{prefix}/put/?value=secret")
    assert response.status_code == 302
    own = key_of(response["Location"])
    assert own not in known
    assert stored(own) == {"put": "secret"}
    assert_nothing_stored(known)
    for key in known - {planted}:
        assert attacker.get(f"/(S({key}))/state/").json()["session_key"] != own


def test_an_async_request_with_a_bogus_key_stores_nothing(site: Any) -> None:
    response = asyncio.run(AsyncClient().get(f"/(S({UNKNOWN}))/touch/"))
    assert_nothing_stored(attacker_keys(response, UNKNOWN))


def test_an_expired_key_is_not_replaced_by_a_stored_one(site: Any, stored_key: str) -> None:
    session = SessionStore(stored_key)
    session.set_expiry(timezone.now() - timedelta(seconds=1))
    session.save()
    response = CookielessClient().get(f"/(S({stored_key}))/touch/")
    assert_nothing_stored(attacker_keys(response, stored_key) - {stored_key})
    assert stored(stored_key) is None


def test_a_refused_user_agent_gets_no_stored_key(site: Any) -> None:
    site.STATEMODES_COOKIELESS_BIND_USER_AGENT = True
    owner = CookielessClient(HTTP_USER_AGENT="Browser A")
    key = key_of(owner.get("/put/?value=secret")["Location"])
    response = CookielessClient(HTTP_USER_AGENT="Browser B").get(f"/(S({key}))/state/")
    assert response.status_code == 302
    assert_nothing_stored(attacker_keys(response, key) - {key})
    assert stored(key) is not None


def test_django_db_sessions_store_nothing_for_a_bogus_key(site: Any) -> None:
    from django.contrib.sessions.backends.db import SessionStore as DbStore

    site.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    response = CookielessClient().get(f"/(S({UNKNOWN}))/touch/")
    for key in attacker_keys(response, UNKNOWN):
        assert not DbStore().exists(key)


def test_x1_in_a_link_never_overrides_the_cookie_session(auto: Any) -> None:
    # The attacker starts a cookieless session of their own and knows its key.
    attacker = CookielessClient()
    response = attacker.get(f"/put/?value=attacker&{PROBE}=1")
    planted = key_of(response["Location"])
    victim, own = cookie_client()
    response = victim.get(f"/(S({planted})X(1))/put/?value=victim-secret", follow=True)
    assert response.status_code == 200
    assert stored(planted) == {"put": "attacker"}
    assert stored(own) == {"put": "victim-secret"}
    state = victim.get("/(X(1))/state/", follow=True).json()
    assert state["session_key"] == own


def test_login_still_rotates_the_key(site: Any) -> None:
    from django.contrib.auth.models import User

    from tests.test_cookieless_middleware import PASSWORD, log_in

    User.objects.create_user("ada", password=PASSWORD)
    client = CookielessClient(enforce_csrf_checks=True)
    before = key_of(client.get("/login/")["Location"])
    response = log_in(client, f"/(S({before}))")
    assert response.status_code == 302
    assert key_of(response["Location"]) != before
    assert stored(before) is None


# The same attacks on a real server (gunicorn): the raw request-target, parsed by the server.


@pytest.fixture(scope="module")
def auto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with serve(
        "AutoDetect", tmp_path_factory.mktemp("auto"), urlconf="tests.cookielessapp.anyurls"
    ) as port:
        yield port


@pytest.fixture(scope="module")
def uri_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with serve(
        "UseUri", tmp_path_factory.mktemp("uri"), urlconf="tests.cookielessapp.anyurls"
    ) as port:
        yield port


def raw_get(port: int, target: str, cookie: str = "") -> tuple[int, str, bytes]:
    """Send ``GET target`` as written (no client-side normalising): status, Location, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", target, headers={"Cookie": cookie} if cookie else {})
        response = conn.getresponse()
        body = response.read()
        return response.status, response.getheader("Location") or "", body
    finally:
        conn.close()


def assert_server_on_site(port: int, status: int, location: str) -> None:
    if location:
        assert not off_site(location, f"127.0.0.1:{port}"), (status, location)


def joined(prefix: str, target: str) -> str:
    return prefix + (target if target.startswith("/") else "/" + target)


@pytest.mark.slow
def test_a_real_server_keeps_the_probe_and_its_second_step_on_the_site(auto_server: int) -> None:
    for target in TARGETS:
        status, location, _ = raw_get(auto_server, target)
        assert_server_on_site(auto_server, status, location)
        query = "&" if "?" in target else "?"
        status, location, _ = raw_get(auto_server, f"{target}{query}{PROBE}=1", f"{PROBE}=1")
        assert_server_on_site(auto_server, status, location)


@pytest.mark.slow
def test_a_real_server_keeps_key_insertion_and_removal_on_the_site(uri_server: int) -> None:
    status, location, _ = raw_get(uri_server, "/put/?value=mine")
    key = key_of(location)
    for target in TARGETS:
        status, location, _ = raw_get(uri_server, f"{target}?do=put")
        assert_server_on_site(uri_server, status, location)
        status, location, _ = raw_get(uri_server, joined(f"/(S({UNKNOWN}))", target))
        assert_server_on_site(uri_server, status, location)
    # Last: "leave" flushes the session, so each target needs one of its own.
    for target in TARGETS:
        status, location, _ = raw_get(uri_server, joined(f"/(S({key}))", target) + "?do=leave")
        assert_server_on_site(uri_server, status, location)
        key = key_of(raw_get(uri_server, "/put/?value=mine")[1])


@pytest.mark.slow
def test_a_real_server_stores_nothing_for_a_bogus_key(uri_server: int) -> None:
    _, location, _ = raw_get(uri_server, f"/(S({UNKNOWN}))/state/")
    for key in {match.group(1) for match in SEGMENT.finditer(location)} | {UNKNOWN}:
        # /state/ reads the session and shows its key: a key the server had stored for the
        # attacker would be adopted here and shown back.
        status, _, body = raw_get(uri_server, f"/(S({key}))/state/")
        assert not (status == 200 and json.loads(body)["session_key"] == key), key
