"""Cookieless sessions through SessionStateMiddleware, with Django's test client (no cookies kept)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import AsyncClient, Client
from django.urls import clear_script_prefix, get_script_prefix, set_script_prefix
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django_statemodes.backends.inproc import SessionStore
from django_statemodes.cookieless import PROBE, split_path
from django_statemodes.cookieless_handler import USER_AGENT_KEY
from django_statemodes.providers.inproc import InProcProvider
from tests.cookielessapp import site_settings

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"
UNKNOWN = "u" * 32
SEGMENT = re.compile(r"/\(S\(([a-z0-9]{32})\)(X\(1\))?\)/")


class CookielessClient(Client):
    """A test client that, like a browser with cookies blocked, never sends a cookie."""

    def request(self, **request: Any) -> Any:
        self.cookies.clear()
        return super().request(**request)


@pytest.fixture
def site(settings: Any) -> Any:
    for name, value in site_settings("UseUri").items():
        setattr(settings, name, value)
    return settings


@pytest.fixture
def client(site: Any) -> Client:
    return CookielessClient(enforce_csrf_checks=True)


@pytest.fixture
def user() -> User:
    return User.objects.create_user("ada", password=PASSWORD)


def key_of(url: str) -> str:
    match = SEGMENT.search(url)
    assert match, f"no session key in {url!r}"
    return match.group(1)


def stored(key: str) -> dict[str, Any] | None:
    """The session's data as the store holds it, or None if there is no such session."""
    item = SessionStore.get_provider().get(key)
    return None if item is None else dict(item.data or {})


def records() -> int:
    """How many sessions the InProc store holds."""
    provider = SessionStore.get_provider()
    assert isinstance(provider, InProcProvider)
    return len(provider.store)


@pytest.fixture
def session_url(client: Client) -> Iterator[str]:
    """The URL prefix of a stored session: /(S(key))."""
    response = client.get("/put/?value=mine")
    key = key_of(response["Location"])
    yield f"/(S({key}))"
    SessionStore().delete(key)


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match
    return match.group(1)


def log_in(client: Client, url: str) -> Any:
    page = client.get(f"{url}/login/")
    assert page.status_code == 200
    token = csrf_token(page.content.decode())
    form = {"username": "ada", "password": PASSWORD, "csrfmiddlewaretoken": token}
    return client.post(f"{url}/login/", form)


# UseCookies, the default.


def test_with_use_cookies_the_segment_is_an_ordinary_path(settings: Any) -> None:
    settings.ROOT_URLCONF = "tests.cookielessapp.urls"
    # Set, so that a cookieless handler running by mistake would show in the headers.
    settings.STATEMODES_COOKIELESS_REFERRER_POLICY = "no-referrer"
    settings.STATEMODES_COOKIELESS_NOINDEX = True
    for segment in [f"(S({UNKNOWN}))", f"(S({UNKNOWN})S({UNKNOWN}))"]:  # well formed, malformed
        response = Client().get(f"/{segment}/touch/")
        assert response.status_code == 404, segment  # resolved as it is: neither cut nor a 400
        assert "Referrer-Policy" not in response, segment
        assert "X-Robots-Tag" not in response, segment


def test_with_use_cookies_the_middleware_has_no_cookieless_handler(settings: Any) -> None:
    from django_statemodes.middleware import SessionStateMiddleware

    assert SessionStateMiddleware(lambda request: None).cookieless is None  # type: ignore[arg-type,return-value]
    settings.STATEMODES_COOKIELESS = "UseUri"
    assert SessionStateMiddleware(lambda request: None).cookieless is not None  # type: ignore[arg-type,return-value]


# UseUri: issuing keys.


def test_a_new_session_is_stored_and_answered_with_a_302_to_its_url(client: Client) -> None:
    response = client.get("/put/?value=first")
    assert response.status_code == 302
    location = response["Location"]
    key = key_of(location)
    assert location == f"/(S({key}))/put/?value=first"
    assert stored(key) == {"put": "first"}
    assert settings.SESSION_COOKIE_NAME not in response.cookies


def test_the_redirect_keeps_the_session_and_the_page_sees_a_clean_path(client: Client) -> None:
    location = client.get("/put/?value=1")["Location"]
    key = key_of(location)
    data = client.get(f"/(S({key}))/state/").json()
    assert data["session_key"] == key
    assert data["path"] == "/state/"
    assert data["path_info"] == "/state/"
    assert data["reverse"] == f"/(S({key}))/page/3/"


def test_a_request_that_does_not_store_a_session_gets_no_key(client: Client) -> None:
    response = client.get("/touch/")
    assert response.status_code == 200
    assert response.json() == {"views": None}
    assert "Location" not in response


def test_a_disabled_view_is_served_without_a_key(client: Client, session_url: str) -> None:
    assert client.get("/disabled/").content == b"no session"
    assert client.get(f"{session_url}/disabled/").content == b"no session"


def test_the_script_prefix_is_restored_after_the_request(client: Client, session_url: str) -> None:
    assert client.get(f"{session_url}/state/").status_code == 200
    assert get_script_prefix() == "/"


def test_a_relative_static_url_never_caches_a_session_key(client: Client, session_url: str) -> None:
    assert client.get(f"{session_url}/state/").json()["static"] == "/static/x.css"
    assert settings.STATIC_URL == "/static/"


def test_url_tags_carry_the_key_and_relative_links_stay_relative(
    client: Client, session_url: str
) -> None:
    html = client.get(f"{session_url}/links/").content.decode()
    assert f'href="{session_url}/page/2/"' in html
    assert 'href="page/2/"' in html
    assert f'action="{session_url}/login/"' in html


def test_cookieless_responses_carry_referrer_policy(client: Client, session_url: str) -> None:
    assert client.get(f"{session_url}/touch/")["Referrer-Policy"] == "same-origin"
    assert client.get("/put/")["Referrer-Policy"] == "same-origin"


def test_the_referrer_policy_and_noindex_follow_the_settings(site: Any) -> None:
    site.STATEMODES_COOKIELESS_REFERRER_POLICY = "no-referrer"
    site.STATEMODES_COOKIELESS_NOINDEX = True
    response = CookielessClient().get("/touch/")
    assert response["Referrer-Policy"] == "no-referrer"
    assert response["X-Robots-Tag"] == "noindex"
    site.STATEMODES_COOKIELESS_REFERRER_POLICY = None
    site.STATEMODES_COOKIELESS_NOINDEX = False
    response = CookielessClient().get("/touch/")
    assert "X-Robots-Tag" not in response
    assert response.get("Referrer-Policy") != "no-referrer"


# Unknown and expired keys are never adopted.


def test_an_unknown_key_is_dropped_from_the_url_and_nothing_is_stored(client: Client) -> None:
    # Issue 14: no placeholder under a fresh key (an attacker could fetch one and plant it).
    count = records()
    response = client.get(f"/(S({UNKNOWN}))/touch/?a=1")
    assert response.status_code == 302
    assert response["Location"] == "/touch/?a=1"
    assert stored(UNKNOWN) is None
    assert records() == count
    assert client.get(response["Location"]).json() == {"views": None}


def test_an_unknown_key_with_a_write_is_stored_under_a_new_key(client: Client) -> None:
    response = client.get(f"/(S({UNKNOWN}))/put/?value=v")
    fresh = key_of(response["Location"])
    assert fresh != UNKNOWN
    assert stored(fresh) == {"put": "v"}
    assert stored(UNKNOWN) is None


def test_an_expired_key_is_not_adopted(client: Client, session_url: str) -> None:
    key = key_of(session_url + "/")
    session = SessionStore(key)
    session.set_expiry(timezone.now() - timedelta(seconds=1))
    session.save()
    response = client.get(f"{session_url}/touch/")
    assert response.status_code == 302
    assert response["Location"] == "/touch/"
    assert stored(key) is None


def test_without_regeneration_an_unknown_key_is_still_never_adopted(site: Any) -> None:
    site.STATEMODES_REGENERATE_EXPIRED_SESSION_ID = False
    client = CookielessClient()
    response = client.get(f"/(S({UNKNOWN}))/touch/")
    assert response.status_code == 200
    response = client.get(f"/(S({UNKNOWN}))/put/")
    assert key_of(response["Location"]) != UNKNOWN
    assert stored(UNKNOWN) is None


def test_a_view_that_flushes_is_not_redirected_in_a_loop(client: Client, session_url: str) -> None:
    response = client.get(f"{session_url}/flush/")
    assert response.status_code == 200
    assert stored(key_of(session_url + "/")) is None


# Logging in rotates the key; redirects carry the current one.


def test_logging_in_rotates_the_key_and_the_redirect_carries_the_new_one(
    client: Client, user: User, session_url: str
) -> None:
    old = key_of(session_url + "/")
    response = log_in(client, session_url)
    assert response.status_code == 302
    new = key_of(response["Location"])
    assert new != old
    assert response["Location"] == f"/(S({new}))/"
    assert stored(old) is None
    assert "Welcome back, ada" in client.get(response["Location"]).content.decode()


def test_cycle_key_then_redirect_carries_the_new_key(client: Client, session_url: str) -> None:
    response = client.get(f"{session_url}/rotate/")
    new = key_of(response["Location"])
    assert new != key_of(session_url + "/")
    assert response["Location"] == f"/(S({new}))/state/"
    assert client.get(response["Location"]).json()["session_key"] == new


def test_login_required_sends_to_the_login_page_with_the_key_and_back(
    client: Client, user: User, session_url: str
) -> None:
    response = client.get(f"{session_url}/private/")
    assert response["Location"] == f"{session_url}/login/?next=/private/"
    page = client.get(response["Location"])
    token = csrf_token(page.content.decode())
    form = {"username": "ada", "password": PASSWORD, "csrfmiddlewaretoken": token}
    response = client.post(f"{session_url}/login/?next=/private/", form)
    new = key_of(response["Location"])
    assert response["Location"] == f"/(S({new}))/private/"
    assert client.get(response["Location"]).content == b"private page of ada"


def test_logging_out_drops_the_key_from_the_redirect(
    client: Client, user: User, session_url: str
) -> None:
    home = log_in(client, session_url)["Location"]
    page = client.get(home.replace("/(S", "/(S", 1) + "page/1/")
    token = csrf_token(page.content.decode())
    response = client.post(f"{home}logout/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_a_login_post_without_the_csrf_token_is_refused(
    client: Client, user: User, session_url: str
) -> None:
    form = {"username": "ada", "password": PASSWORD}
    assert client.post(f"{session_url}/login/", form).status_code == 403


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/go/4/", "{url}/page/4/"),  # redirect() with a view name: reverse()
        ("/hand-written/", "{url}/page/7/?from=hand"),  # root-relative, written by hand
        ("/absolute/", "http://testserver{url}/page/8/"),  # absolute, this site
        ("/elsewhere/", "https://example.com/page/1/"),  # another site: untouched
    ],
)
def test_redirects_keep_the_key_when_they_stay_on_the_site(
    client: Client, session_url: str, path: str, location: str
) -> None:
    response = client.get(session_url + path)
    assert response.status_code == 302
    assert response["Location"] == location.format(url=session_url)


# An application mounted under a SCRIPT_NAME: the segment comes right after it.

MOUNT = "/app"


class MountedClient(CookielessClient):
    """A cookieless client of the site mounted at /app, as a WSGI server passes it.

    The server sends ``SCRIPT_NAME=/app`` and the path below it as ``PATH_INFO``; Django's
    ``WSGIHandler`` then sets the script prefix from ``SCRIPT_NAME``, which the test client's
    handler leaves out, so this client does that one step itself.
    """

    def request(self, **request: Any) -> Any:
        request["SCRIPT_NAME"] = MOUNT
        set_script_prefix(MOUNT)
        return super().request(**request)


@pytest.fixture
def mounted(site: Any) -> Iterator[Client]:
    yield MountedClient(enforce_csrf_checks=True)
    clear_script_prefix()


def below_mount(location: str) -> str:
    """Return the PATH_INFO a server mounting the site at /app passes for ``location``."""
    assert location.startswith(MOUNT + "/"), location
    return location[len(MOUNT) :]


def test_under_a_script_name_the_key_follows_the_mount_point(mounted: Client) -> None:
    response = mounted.get("/put/?value=mounted")
    assert response.status_code == 302
    key = key_of(response["Location"])
    session = f"{MOUNT}/(S({key}))"
    assert response["Location"] == f"{session}/put/?value=mounted"
    assert stored(key) == {"put": "mounted"}
    data = mounted.get(below_mount(f"{session}/state/")).json()
    assert data["session_key"] == key
    assert data["path"] == f"{MOUNT}/state/"
    assert data["path_info"] == "/state/"
    assert data["reverse"] == f"{session}/page/3/"
    assert data["static"] == f"{MOUNT}/static/x.css"  # the mount, never the key
    assert get_script_prefix() == f"{MOUNT}/"  # the handler's prefix is restored, not "/"


def test_under_a_script_name_links_and_redirects_carry_the_mount_and_the_key(
    mounted: Client,
) -> None:
    key = key_of(mounted.get("/put/")["Location"])
    session = f"{MOUNT}/(S({key}))"
    html = mounted.get(below_mount(f"{session}/links/")).content.decode()
    assert f'href="{session}/page/2/"' in html
    assert 'href="page/2/"' in html
    assert f'action="{session}/login/"' in html
    assert mounted.get(below_mount(f"{session}/go/4/"))["Location"] == f"{session}/page/4/"
    # These views write "/page/7/" and http://testserver/page/8/ by hand: outside the
    # application at /app, so not its URLs, and left alone.
    assert mounted.get(below_mount(f"{session}/hand-written/"))["Location"] == "/page/7/?from=hand"
    absolute = mounted.get(below_mount(f"{session}/absolute/"))["Location"]
    assert absolute == "http://testserver/page/8/"


def test_under_a_script_name_logging_in_redirects_to_the_new_key_below_the_mount(
    mounted: Client, user: User
) -> None:
    old = key_of(mounted.get("/put/")["Location"])
    response = mounted.get(f"/(S({old}))/private/")
    assert response["Location"] == f"{MOUNT}/(S({old}))/login/?next={MOUNT}/private/"
    page = mounted.get(below_mount(response["Location"]))
    form = {"username": "ada", "password": PASSWORD}
    form["csrfmiddlewaretoken"] = csrf_token(page.content.decode())
    response = mounted.post(f"/(S({old}))/login/?next={MOUNT}/private/", form)
    new = key_of(response["Location"])
    assert new != old
    assert response["Location"] == f"{MOUNT}/(S({new}))/private/"
    assert mounted.get(below_mount(response["Location"])).content == b"private page of ada"


def test_under_a_script_name_autodetect_probes_and_goes_cookieless_below_the_mount(
    site: Any, mounted: Client
) -> None:
    site.STATEMODES_COOKIELESS = "AutoDetect"
    response = mounted.get("/put/?a=1")
    assert response["Location"] == f"{MOUNT}/put/?a=1&{PROBE}=1"
    response = mounted.get(below_mount(response["Location"]))  # back without the probe cookie
    key = key_of(response["Location"])
    assert response["Location"] == f"{MOUNT}/(S({key})X(1))/put/?a=1"
    data = mounted.get(below_mount(f"{MOUNT}/(S({key})X(1))/state/")).json()
    assert data["reverse"] == f"{MOUNT}/(S({key})X(1))/page/3/"


# Malformed segments: ignored or 400, never 500.


@pytest.mark.parametrize(
    "segment",
    [
        f"(S({UNKNOWN})S({'v' * 32}))",
        f"(S({UNKNOWN})S({UNKNOWN}))",
        "(X(1)X(1))",
        f"(S({UNKNOWN})F(ticket))",
        "(X(2))",
    ],
)
def test_a_segment_with_bad_tokens_is_answered_400(client: Client, segment: str) -> None:
    response = client.get(f"/{segment}/touch/")
    assert response.status_code == 400
    assert b"cookieless segment" in response.content


@pytest.mark.parametrize(
    "value",
    ["", "short", UNKNOWN[:31], UNKNOWN + "u", UNKNOWN.upper(), UNKNOWN[:31] + "-", "é" * 32],
)
def test_a_bad_key_is_ignored_and_dropped_from_the_url(client: Client, value: str) -> None:
    response = client.get(f"/(S({value}))/touch/")
    assert response.status_code == 302
    assert response["Location"] == "/touch/"


@pytest.mark.parametrize(
    "path",
    [f"/(S({UNKNOWN})/touch/", "/(foo)/touch/", f"/(s({UNKNOWN}))/touch/", "/(/touch/"],
)
def test_text_outside_the_grammar_is_resolved_as_an_ordinary_path(
    client: Client, path: str
) -> None:
    assert client.get(path).status_code == 404


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(alphabet="()SXF1uv/é", max_size=30))
def test_no_segment_makes_the_middleware_fail(client: Client, text: str) -> None:
    response = client.get("/(" + text + "/touch/")
    assert response.status_code in (200, 302, 400, 404)


# Async views and an async middleware chain.


def test_an_async_request_gets_its_key_by_redirect(site: Any) -> None:
    client = AsyncClient()
    response = asyncio.run(client.get("/async-put/"))
    assert response.status_code == 302
    key = key_of(response["Location"])
    client.cookies.clear()
    response = asyncio.run(client.get(response["Location"]))
    assert response.json() == {"key": key}


def test_an_async_request_with_an_unknown_key_loses_it(site: Any) -> None:
    response = asyncio.run(AsyncClient().get(f"/(S({UNKNOWN}))/touch/"))
    assert response.status_code == 302
    assert response["Location"] == "/touch/"


# Binding the key to the User-Agent.


@pytest.fixture
def bound(site: Any) -> Any:
    site.STATEMODES_COOKIELESS_BIND_USER_AGENT = True
    return site


def test_a_bound_key_works_for_its_own_user_agent(bound: Any) -> None:
    client = CookielessClient(HTTP_USER_AGENT="Browser A")
    key = key_of(client.get("/put/?value=a")["Location"])
    data = stored(key)
    assert data is not None and data[USER_AGENT_KEY]
    assert client.get(f"/(S({key}))/state/").json()["session_key"] == key


def test_a_bound_key_used_by_another_user_agent_is_refused_and_dropped(bound: Any) -> None:
    owner = CookielessClient(HTTP_USER_AGENT="Browser A")
    key = key_of(owner.get("/put/?value=secret")["Location"])
    thief = CookielessClient(HTTP_USER_AGENT="Browser B")
    response = thief.get(f"/(S({key}))/state/")
    assert response.status_code == 302
    assert response["Location"] == "/state/"
    data = stored(key)
    assert data is not None and data["put"] == "secret"
    item = SessionStore.get_provider().get(key)
    assert item is not None and not item.locked
    assert owner.get(f"/(S({key}))/touch/").status_code == 200


def test_an_async_request_with_another_user_agent_is_refused(bound: Any) -> None:
    owner = CookielessClient(HTTP_USER_AGENT="Browser A")
    key = key_of(owner.get("/put/?value=secret")["Location"])
    thief = AsyncClient(HTTP_USER_AGENT="Browser B")
    response = asyncio.run(thief.get(f"/(S({key}))/touch/"))
    assert response.status_code == 302
    assert response["Location"] == "/touch/"


# AutoDetect.


@pytest.fixture
def auto(site: Any) -> Any:
    site.STATEMODES_COOKIELESS = "AutoDetect"
    return site


def test_autodetect_probes_a_first_visit_once(auto: Any) -> None:
    response = Client().get("/page/1/?a=1")
    assert response.status_code == 302
    assert response["Location"] == f"/page/1/?a=1&{PROBE}=1"
    assert response.cookies[PROBE].value == "1"


def test_autodetect_goes_cookieless_when_the_probe_returns_without_its_cookie(auto: Any) -> None:
    client = CookielessClient()
    response = client.get(f"/put/?a=1&{PROBE}=1")
    assert response.status_code == 302
    location = response["Location"]
    key = key_of(location)
    assert location == f"/(S({key})X(1))/put/?a=1"
    assert settings.SESSION_COOKIE_NAME not in response.cookies
    data = client.get(f"/(S({key})X(1))/state/").json()
    assert data["reverse"] == f"/(S({key})X(1))/page/3/"


def test_autodetect_keeps_urls_clean_when_the_probe_returns_with_its_cookie(auto: Any) -> None:
    client = Client()
    probe = client.get("/put/")
    response = client.get(probe["Location"])
    assert response.status_code == 302
    assert response["Location"] == "/put/"
    response = client.get("/put/")
    assert response.status_code == 200
    assert settings.SESSION_COOKIE_NAME in response.cookies
    assert client.get("/state/").json()["reverse"] == "/page/3/"


def test_autodetect_uses_cookies_without_a_probe_when_a_cookie_is_sent(auto: Any) -> None:
    client = Client()
    client.cookies["anything"] = "1"
    response = client.get("/put/")
    assert response.status_code == 200
    assert settings.SESSION_COOKIE_NAME in response.cookies
    assert "Referrer-Policy" not in response or response["Referrer-Policy"] == "same-origin"


def test_autodetect_never_probes_a_post(auto: Any) -> None:
    assert CookielessClient().post("/put/").status_code == 200


def test_autodetect_stays_cookieless_with_x1_in_the_url(auto: Any) -> None:
    client = Client()
    client.cookies["anything"] = "1"
    response = client.get("/(X(1))/put/")
    key = key_of(response["Location"])
    assert response["Location"] == f"/(S({key})X(1))/put/"


def test_autodetect_with_cookies_strips_a_stray_segment(auto: Any) -> None:
    client = Client()
    client.cookies["anything"] = "1"
    data = client.get(f"/(S({UNKNOWN}))/state/").json()
    assert data["path"] == "/state/"
    assert data["reverse"] == "/page/3/"
    assert data["session_key"] != UNKNOWN


def test_split_path_agrees_with_what_the_view_sees(client: Client, session_url: str) -> None:
    segment, rest = split_path(f"{session_url}/state/")
    assert segment is not None
    assert client.get(f"{session_url}/state/").json()["path_info"] == rest


def test_an_async_request_binds_a_new_session_to_its_user_agent(bound: Any) -> None:
    response = asyncio.run(AsyncClient(HTTP_USER_AGENT="Browser A").get("/async-put/"))
    data = stored(key_of(response["Location"]))
    assert data is not None and data["put"] == "async" and data[USER_AGENT_KEY]


# Django's own engines.


def test_django_db_sessions_work_cookieless_and_are_never_adopted(site: Any) -> None:
    from django.contrib.sessions.backends.db import SessionStore as DbStore
    from django.contrib.sessions.models import Session

    site.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    client = CookielessClient()
    key = key_of(client.get("/put/?value=db")["Location"])
    assert DbStore(key).get("put") == "db"
    response = client.get(f"/(S({UNKNOWN}))/touch/")
    assert response["Location"] == "/touch/"
    assert not DbStore().exists(UNKNOWN)
    assert Session.objects.count() == 1  # the /put/ above, no placeholder


def test_a_disabled_view_on_django_db_sessions_is_served_as_it_is(site: Any) -> None:
    site.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    response = CookielessClient().get(f"/(S({UNKNOWN}))/disabled/")
    assert response.status_code == 200
    assert response.content == b"no session"
    assert response["Referrer-Policy"] == "same-origin"
