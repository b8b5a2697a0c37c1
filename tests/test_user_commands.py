"""``manage.py endsessions``: a user's sessions, or every signed-in user's, ended at once."""

from __future__ import annotations

from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from django_statemodes import sessions
from django_statemodes.core import registry
from django_statemodes.signals import session_end
from django_statemodes.test import clear_sessions
from tests.fixtures_sql import ALIASES, PG, PG_ENABLED

pytestmark = pytest.mark.django_db(databases=["default", *ALIASES])


@pytest.fixture(params=["inproc", *(["sql-pg"] if PG_ENABLED else [])])
def engine(request: Any, settings: Any, sql_tables: list[str]) -> Iterator[str]:
    settings.STATEMODES_USER_INDEX = True
    if request.param == "sql-pg":
        settings.SESSION_ENGINE = "django_statemodes.backends.sql"
        settings.STATEMODES_SQL_DATABASE = PG
    else:
        settings.SESSION_ENGINE = "django_statemodes.backends.inproc"
    clear_sessions()
    yield request.param
    clear_sessions()
    registry.close_all()


def run(*args: str) -> str:
    out = StringIO()
    call_command("endsessions", *args, stdout=out)
    return out.getvalue()


def signed_in(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def anonymous() -> str:
    store = sessions._engine()(None)
    store["cart"] = [1]
    store.save()
    assert store.session_key is not None
    return store.session_key


def test_a_users_sessions_end_and_send_session_end(engine: str) -> None:
    ada, grace = User.objects.create_user("ada"), User.objects.create_user("grace")
    keys = [signed_in(ada), signed_in(ada)]
    kept = signed_in(grace)
    ended: list[str] = []

    def on_end(sender: Any, session_key: str, **kwargs: Any) -> None:
        ended.append(session_key)

    session_end.connect(on_end)
    try:
        assert "Ended 2 session(s) of 1 user(s)." in run("--user", "ada")
    finally:
        session_end.disconnect(on_end)
    assert sorted(ended) == sorted(keys)
    assert sessions.user_sessions(ada) == []
    assert [info.session_key for info in sessions.user_sessions(grace)] == [kept]


def test_dry_run_lists_key_prefixes_and_ends_nothing(engine: str) -> None:
    ada = User.objects.create_user("ada")
    keys = [signed_in(ada), signed_in(ada)]
    output = run("--user", "ada", "--dry-run")
    assert "Would end 2 session(s) of 1 user(s)." in output
    for key in keys:
        assert f"would end {key[:8]}..." in output and key not in output
    assert len(sessions.user_sessions(ada)) == 2


def test_all_users_ends_every_signed_in_session_and_keeps_anonymous_ones(engine: str) -> None:
    ada, grace = User.objects.create_user("ada"), User.objects.create_user("grace")
    signed_in(ada), signed_in(grace), signed_in(grace)
    cart = anonymous()
    assert "Would end 3 session(s) of 2 user(s)." in run("--all-users", "--dry-run")
    assert "Ended 3 session(s) of 2 user(s)." in run("--all-users")
    assert sessions.user_sessions(ada) == sessions.user_sessions(grace) == []
    assert sessions._engine()(None).exists(cart)


def test_mistakes_are_command_errors(engine: str, settings: Any) -> None:
    with pytest.raises(CommandError, match="No user 'nobody'"):
        run("--user", "nobody")
    with pytest.raises(CommandError):
        run()  # neither --user nor --all-users
    settings.STATEMODES_USER_INDEX = False
    with pytest.raises(CommandError, match="STATEMODES_USER_INDEX"):
        run("--all-users")
