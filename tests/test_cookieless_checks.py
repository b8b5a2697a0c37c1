"""System checks for cookieless sessions: E009 and E050-E053, W050."""

from __future__ import annotations

from typing import Any

import pytest

from django_statemodes.checks import check_settings

COOKIELESS_IDS = {
    "django_statemodes.E009",
    "django_statemodes.E050",
    "django_statemodes.E051",
    "django_statemodes.E052",
    "django_statemodes.E053",
    "django_statemodes.W050",
}


def ids(settings: Any) -> set[str]:
    return {message.id for message in check_settings() if message.id is not None}


@pytest.fixture
def cookieless(settings: Any) -> Any:
    settings.STATEMODES_COOKIELESS = "UseUri"
    settings.CSRF_USE_SESSIONS = True
    settings.MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
    return settings


def test_a_correct_cookieless_site_passes(cookieless: Any) -> None:
    assert not ids(cookieless) & COOKIELESS_IDS


@pytest.mark.parametrize("mode", ["UseUri", "AutoDetect"])
def test_cookieless_without_csrf_in_the_session_is_an_error(cookieless: Any, mode: str) -> None:
    cookieless.STATEMODES_COOKIELESS = mode
    assert "django_statemodes.E009" not in ids(cookieless)
    cookieless.CSRF_USE_SESSIONS = False
    assert "django_statemodes.E009" in ids(cookieless)


def test_with_cookies_csrf_may_stay_in_its_cookie(cookieless: Any) -> None:
    cookieless.STATEMODES_COOKIELESS = "UseCookies"
    cookieless.CSRF_USE_SESSIONS = False
    assert "django_statemodes.E009" not in ids(cookieless)


@pytest.mark.parametrize("policy", ["unsafe-url", "no-referrer-when-downgrade", "", "same_origin"])
def test_a_referrer_policy_that_leaks_keys_is_an_error(cookieless: Any, policy: str) -> None:
    cookieless.STATEMODES_COOKIELESS_REFERRER_POLICY = policy
    assert "django_statemodes.E050" in ids(cookieless)


@pytest.mark.parametrize("policy", [None, "no-referrer", "same-origin", "strict-origin"])
def test_safe_referrer_policies_pass(cookieless: Any, policy: str | None) -> None:
    cookieless.STATEMODES_COOKIELESS_REFERRER_POLICY = policy
    assert "django_statemodes.E050" not in ids(cookieless)


@pytest.mark.parametrize(
    "name",
    [
        "STATEMODES_COOKIELESS_NOINDEX",
        "STATEMODES_COOKIELESS_BIND_USER_AGENT",
        "STATEMODES_REGENERATE_EXPIRED_SESSION_ID",
    ],
)
def test_cookieless_switches_must_be_bools(cookieless: Any, name: str) -> None:
    setattr(cookieless, name, "yes")
    assert "django_statemodes.E051" in ids(cookieless)


@pytest.mark.parametrize(
    "engine",
    ["django.contrib.sessions.backends.signed_cookies", "django_statemodes.backends.off"],
)
def test_cookieless_needs_a_server_side_engine(cookieless: Any, engine: str) -> None:
    cookieless.SESSION_ENGINE = engine
    assert "django_statemodes.E052" in ids(cookieless)


def test_cookieless_needs_the_middleware(cookieless: Any) -> None:
    cookieless.MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
    assert "django_statemodes.E053" in ids(cookieless)


def test_messages_in_cookies_are_a_warning_when_cookieless(cookieless: Any) -> None:
    del cookieless.MESSAGE_STORAGE  # Django's default: FallbackStorage, cookie first
    assert "django_statemodes.W050" in ids(cookieless)


def test_with_cookies_the_cookieless_checks_stay_quiet(settings: Any) -> None:
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
    assert not ids(settings) & COOKIELESS_IDS
