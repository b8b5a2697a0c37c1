"""The admin's read-only list of live SQL-mode sessions, through the test client as a superuser.

A session key is a credential: no page of the admin shows one whole, only its first characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings
from model_bakery import baker

from django_statemodes.backends.sql import SessionStore
from django_statemodes.models import KEY_PREFIX
from django_statemodes.providers.sql import SQLStateProvider
from django_statemodes.signals import session_end
from tests.fixtures_sql import ALIASES
from tests.settings import INSTALLED_APPS, MIDDLEWARE

pytestmark = pytest.mark.django_db(databases=["default", *ALIASES])

CHANGELIST = "/admin/django_statemodes/sessionstate/"


@pytest.fixture(params=ALIASES)
def site(request: Any, sql_tables: list[str]) -> Iterator[str]:
    """The admin on, sessions in SQL mode on the alias (the admin's own login session too)."""
    with override_settings(
        INSTALLED_APPS=[*INSTALLED_APPS, "django.contrib.admin"],
        ROOT_URLCONF="tests.sqlapp.admin_urls",
        MIDDLEWARE=MIDDLEWARE,
        SESSION_ENGINE="django_statemodes.backends.sql",
        STATEMODES_SQL_DATABASE=request.param,
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
    ):
        yield request.param


@pytest.fixture
def admin(site: str) -> Client:
    client = Client()
    client.force_login(baker.make(User, is_superuser=True, is_staff=True, is_active=True))
    return client


def new_session(**data: Any) -> str:
    """Save a new SQL-mode session holding ``data``; return its key."""
    store = SessionStore()
    for key, value in data.items():
        store[key] = value
    store.save()
    assert store.session_key is not None
    return store.session_key


def sql_provider() -> SQLStateProvider:
    provider = SessionStore.get_provider()
    assert isinstance(provider, SQLStateProvider)
    return provider


def test_the_list_shows_live_sessions_with_their_columns(admin: Client) -> None:
    session = new_session(cart="x" * 500)
    locked = new_session(n=1)
    holder = SessionStore(locked, access="ReadWrite")
    assert holder["n"] == 1  # holds the lock now
    response = admin.get(CHANGELIST)
    assert response.status_code == 200
    page = response.content.decode()
    for heading in (
        "Session key",
        "Application",
        "Created",
        "Expires",
        "Locked",
        "Lock age",
        "Size",
    ):
        assert heading in page
    row = row_of(page, session)
    assert f'<td class="field-key">{session[:KEY_PREFIX]}\u2026</td>' in row
    assert ">default<" in row  # the application row's name
    assert "checked" not in row  # no session is ticked for ending beforehand
    # The stored size exactly: the marker byte + {"cart":"x...x"} (11 bytes + 500), never the data.
    assert '<td class="field-size">512</td>' in row
    assert "&quot;cart&quot;" not in row and "xxxxx" not in row
    assert " s<" in row_of(page, locked)  # a lock age in seconds
    holder.finish(save=False)


def test_no_page_shows_a_whole_key(admin: Client) -> None:
    session = new_session(a=1)
    locked = new_session(n=1)
    holder = SessionStore(locked, access="ReadWrite")
    assert holder["n"] == 1
    suffix = sql_provider().suffix
    pages = [
        "/admin/django_statemodes/",  # the app's index (the site's needs the log's table)
        CHANGELIST,
        f"{CHANGELIST}?q={session[:KEY_PREFIX]}",  # a search by the prefix the list shows
        f"{CHANGELIST}?locked__exact=1",
        f"{CHANGELIST}?o=1",
    ]
    for url in pages:
        response = admin.get(url)
        assert response.status_code == 200, url
        page = response.content.decode()
        assert session not in page and locked not in page, url
    assert session[:KEY_PREFIX] + "\u2026" in admin.get(pages[2]).content.decode()
    assert locked[:KEY_PREFIX] + "\u2026" in admin.get(pages[3]).content.decode()
    # No page per row: its URL would hold the SessionId (the key and the application's suffix).
    for view in ("change/", "history/", "delete/", ""):
        assert admin.get(f"{CHANGELIST}{session}{suffix}/{view}").status_code == 404, view
    holder.finish(save=False)


def test_expired_sessions_are_not_listed(admin: Client) -> None:
    gone = new_session(a=1, _session_expiry=1)
    sql_provider().set_and_release(gone, b"\x00{}", lock_id=None, timeout=0)
    assert gone[:KEY_PREFIX] not in admin.get(CHANGELIST).content.decode()


def test_the_list_is_read_only(admin: Client) -> None:
    new_session(a=1)
    assert admin.get(CHANGELIST + "add/").status_code == 404
    page = admin.get(CHANGELIST).content.decode()
    assert "delete_selected" not in page
    assert "end_sessions" in page
    assert "/change/" not in page  # no row links to a page of its own


def test_the_end_action_ends_the_session_and_sends_session_end(admin: Client) -> None:
    victim = new_session(user="ada")
    bystander = new_session(user="bob")
    ended: list[tuple[str, Any, str]] = []

    def on_end(sender: Any, session_key: str, data: Any, reason: str, **kwargs: Any) -> None:
        ended.append((session_key, data, reason))

    chosen = checkbox_of(admin.get(CHANGELIST).content.decode(), victim)
    session_end.connect(on_end)
    try:
        response = admin.post(
            CHANGELIST, {"action": "end_sessions", "_selected_action": [chosen]}, follow=True
        )
    finally:
        session_end.disconnect(on_end)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Ended 1 session(s)." in page
    assert victim not in page and bystander not in page
    assert ended == [(victim, {"user": "ada"}, "abandoned")]
    assert SessionStore().exists(victim) is False
    assert SessionStore().exists(bystander) is True


def test_a_checkbox_of_an_ended_session_ends_nothing(admin: Client) -> None:
    session = new_session(a=1)
    chosen = checkbox_of(admin.get(CHANGELIST).content.decode(), session)
    SessionStore(session).delete()
    again = new_session(b=2)
    response = admin.post(
        CHANGELIST, {"action": "end_sessions", "_selected_action": [chosen]}, follow=True
    )
    assert "Ended 0 session(s)." in response.content.decode()
    assert SessionStore().exists(again) is True


def test_staff_without_permission_cannot_see_the_list(site: str) -> None:
    client = Client()
    client.force_login(baker.make(User, is_staff=True, is_active=True))
    assert admin_status(client) == 403


def admin_status(client: Client) -> int:
    return client.get(CHANGELIST).status_code


def row_of(page: str, session_key: str) -> str:
    """The list's row of ``session_key``, found by the prefix it shows."""
    return next(row for row in page.split("<tr") if session_key[:KEY_PREFIX] + "\u2026" in row)


def checkbox_of(page: str, session_key: str) -> str:
    """The value of the action checkbox in the row of ``session_key``."""
    found = re.search(r'name="_selected_action" value="([^"]+)"', row_of(page, session_key))
    assert found is not None
    return found.group(1)
