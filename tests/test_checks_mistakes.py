"""System checks for the mistakes a typo or a middleware order makes: each named with its value
and the right one, and nothing else reported for the same mistake."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import CheckMessage
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import Client, override_settings

from django_statemodes.checks import check_settings
from django_statemodes.checks.names import known_settings

OURS = "django_statemodes.middleware.SessionStateMiddleware"
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
MESSAGES = "django.contrib.messages.middleware.MessageMiddleware"
CSRF = "django.middleware.csrf.CsrfViewMiddleware"


def ids(messages: list[CheckMessage]) -> list[str]:
    return [message.id or "" for message in messages]


def test_the_test_settings_raise_nothing() -> None:
    assert check_settings() == []


def test_a_misspelled_setting_is_named_with_the_one_it_resembles(settings: Any) -> None:
    settings.STATEMODES_LOCKTIMEOUT = 30
    messages = check_settings()
    assert ids(messages) == ["django_statemodes.W081"]
    assert "STATEMODES_LOCKTIMEOUT" in messages[0].msg
    assert "Did you mean 'STATEMODES_LOCK_TIMEOUT'?" in (messages[0].hint or "")


def test_every_setting_the_package_reads_is_known(settings: Any) -> None:
    known = known_settings()
    assert "STATEMODES_LOCK_TIMEOUT" in known and "STATEMODES_STATE_CONNECTION" in known
    with override_settings(STATEMODES_COMPRESSION=False, STATEMODES_LOCK_QUEUE_LIMIT=50):
        assert "django_statemodes.W081" not in ids(check_settings())


def test_an_engine_path_that_does_not_import_is_an_error_naming_the_right_one(
    settings: Any,
) -> None:
    settings.SESSION_ENGINE = "django_statemodes.backends.inprocc"
    messages = check_settings()
    assert ids(messages) == ["django_statemodes.E082"]  # and no cascade of mode checks
    assert "'django_statemodes.backends.inprocc'" in messages[0].msg
    assert "Did you mean 'django_statemodes.backends.inproc'?" in (messages[0].hint or "")


@pytest.mark.parametrize(
    ("source", "says"),
    [
        (
            "django.contrib.sessions.backends.dbb",
            "Did you mean 'django.contrib.sessions.backends.db'?",
        ),
        ("django.contrib.sessions.backends.signed_cookies", "live in the browser"),
        ("django_statemodes.backends.inproc", "the SESSION_ENGINE itself"),
        ("django_statemodes.checks", "no SessionStore class"),
        (42, "not 42"),
    ],
)
def test_an_import_from_engine_sessions_cannot_move_from_is_an_error_echoing_it(
    settings: Any, source: object, says: str
) -> None:
    settings.SESSION_ENGINE = "django_statemodes.backends.inproc"
    settings.STATEMODES_IMPORT_FROM = source
    messages = check_settings()
    assert ids(messages) == ["django_statemodes.E083"]
    assert says in messages[0].msg + (messages[0].hint or "")
    settings.STATEMODES_IMPORT_FROM = "django.contrib.sessions.backends.db"
    assert check_settings() == []


@pytest.mark.parametrize("reader", [AUTH, MESSAGES])
def test_a_middleware_reading_the_session_before_ours_is_an_error(
    settings: Any, reader: str
) -> None:
    settings.MIDDLEWARE = [reader, OURS]
    messages = check_settings()
    assert ids(messages) == ["django_statemodes.E080"]
    assert reader in messages[0].msg and "Move" in (messages[0].hint or "")
    with pytest.raises(SystemCheckError, match="E080"):
        call_command("check", databases=[])  # no connections (Django 6.1 opens every alias)


def test_csrf_before_ours_is_an_error_only_when_it_keeps_its_token_in_the_session(
    settings: Any,
) -> None:
    settings.MIDDLEWARE = [CSRF, OURS, AUTH]
    assert check_settings() == []
    settings.CSRF_USE_SESSIONS = True
    assert ids(check_settings()) == ["django_statemodes.E080"]


def test_the_order_the_check_accepts_serves_requests(settings: Any) -> None:
    # The order E080 asks for, through Django's handler: a request reaches the view.
    settings.MIDDLEWARE = [OURS, AUTH, MESSAGES]
    assert check_settings() == []
    assert Client().get("/increment/").status_code == 200


def test_a_bad_value_is_echoed_and_reported_once(settings: Any) -> None:
    settings.STATEMODES_COOKIELESS = "true"
    messages = check_settings()
    # E005 alone: no CSRF error (E009) for a value that is no cookieless mode at all.
    assert ids(messages) == ["django_statemodes.E005"]
    assert "not 'true'" in messages[0].msg
    settings.STATEMODES_COOKIELESS = "UseCookies"
    settings.STATEMODES_LOCK_TIMEOUT = "110"
    messages = check_settings()
    assert ids(messages) == ["django_statemodes.E003"] and "not '110'" in messages[0].msg
