"""The admin's live-sessions page, in every mode whose store keeps the index: InProc, SQL on
PostgreSQL, StateServer (a daemon of its own) and Redis (db 15 of the Redis at 6379)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client, override_settings

from django_statemodes import sessions
from django_statemodes.core import registry
from django_statemodes.test import clear_sessions
from tests.fixtures_sql import ALIASES, PG, PG_ENABLED
from tests.fixtures_stateserver import StateServerProcess
from tests.settings import INSTALLED_APPS, MIDDLEWARE

pytestmark = pytest.mark.django_db(databases=["default", *ALIASES])

PAGE = "/admin/django_statemodes/livesession/"
TEMPLATES = [
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
]
ENGINES = {
    "inproc": ("django_statemodes.backends.inproc", {}),
    **(
        {"sql-pg": ("django_statemodes.backends.sql", {"STATEMODES_SQL_DATABASE": PG})}
        if PG_ENABLED
        else {}
    ),
    "stateserver": ("django_statemodes.backends.stateserver", {}),
    "redis": (
        "django_statemodes.backends.custom",
        {
            "STATEMODES_CUSTOM_PROVIDER": "django_statemodes.providers.redis.RedisProvider",
            "STATEMODES_REDIS_ALIAS": "statemodes-redis",
        },
    ),
}


@pytest.fixture(scope="module")
def state_server() -> Iterator[StateServerProcess]:
    with StateServerProcess() as server:
        yield server


@pytest.fixture(params=list(ENGINES))
def site(request: Any, sql_tables: list[str]) -> Iterator[str]:
    engine, extra = ENGINES[request.param]
    if request.param == "stateserver":
        server = request.getfixturevalue("state_server")
        extra = {"STATEMODES_STATE_CONNECTION": server.connection}
    elif request.param == "redis":
        request.getfixturevalue("redis_server")
    with override_settings(
        INSTALLED_APPS=[*INSTALLED_APPS, "django.contrib.admin"],
        ROOT_URLCONF="tests.sqlapp.admin_urls",
        MIDDLEWARE=MIDDLEWARE,
        SESSION_ENGINE=engine,
        STATEMODES_USER_INDEX=True,
        TEMPLATES=TEMPLATES,
        **extra,
    ):
        clear_sessions()
        yield request.param
        clear_sessions()
        registry.close_all()


def signed_in(user: User) -> str:
    client = Client()
    client.force_login(user)  # Django's login(), on a request of its own: no browser, no IP
    return client.cookies["sessionid"].value


@pytest.fixture
def admin(site: str) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="x"))
    return client


def test_the_page_lists_live_sessions_with_a_key_prefix_only(admin: Client) -> None:
    ada = User.objects.create_user("ada")
    keys = [signed_in(ada), signed_in(ada)]
    store = sessions._engine()(None)
    store["anonymous"] = True
    store.save()
    page = admin.get(PAGE).content.decode()
    for key in [*keys, store.session_key]:
        assert key is not None and key not in page
        assert key[:8] + "\u2026" in page
    assert page.count(f'<a href="?user={ada.pk}">{ada.pk}</a>') == 2
    # The admin's own session, ada's two and the anonymous one.
    assert "4 live sessions" in page
    for heading in ("Session key", "User", "Created", "Last seen", "Expires", "Locked", "Size"):
        assert f"<th>{heading}" in page


def test_the_page_filters_by_user_and_shows_locks(admin: Client) -> None:
    ada, grace = User.objects.create_user("ada"), User.objects.create_user("grace")
    mine, theirs = signed_in(ada), signed_in(grace)
    holder = sessions._engine()(mine, access="ReadWrite")
    assert holder.get("_auth_user_id") == str(ada.pk)  # holds the lock now
    try:
        page = admin.get(PAGE, {"user": str(ada.pk)}).content.decode()
        assert mine[:8] in page and theirs[:8] not in page
        assert "1 live session" in page
        row = next(line for line in page.split("<tr") if mine[:8] in line)
        assert "<td>yes</td>" in row and " s</td>" in row
    finally:
        holder.finish(save=False)
    assert "No live sessions" in admin.get(PAGE, {"user": "nobody"}).content.decode()


def test_the_end_action_ends_the_chosen_sessions(admin: Client) -> None:
    ada = User.objects.create_user("ada")
    victim, kept = signed_in(ada), signed_in(ada)
    response = admin.post(
        PAGE + f"?user={ada.pk}", {"session": [sessions.session_reference(victim), "junk"]}
    )
    assert response.status_code == 302
    assert [info.session_key for info in sessions.user_sessions(ada)] == [kept]


def test_staff_need_the_permissions(site: str) -> None:
    staff = User.objects.create_user("staff", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(PAGE).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_livesession"))
    client.force_login(User.objects.get(pk=staff.pk))
    page = client.get(PAGE)
    assert page.status_code == 200 and b'name="session"' not in page.content
    assert client.post(PAGE, {"session": ["x"]}).status_code == 403


def test_with_the_index_off_the_page_says_what_to_set(admin: Client) -> None:
    with override_settings(STATEMODES_USER_INDEX=False):
        page = admin.get(PAGE).content.decode()
    assert "STATEMODES_USER_INDEX" in page
