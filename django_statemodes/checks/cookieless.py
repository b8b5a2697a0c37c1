"""Checks of cookieless sessions (docs/cookieless.md): E005, E009, E050-E053, W050."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from django_statemodes.conf import conf

from .common import ENGINE_PREFIX, not_bools
from .middleware import DJANGO_MIDDLEWARE, MIDDLEWARE

COOKIELESS_MODES = ("UseCookies", "UseUri", "AutoDetect")
# Referrer policies that never send a URL's path to another site (a cookieless URL holds a key).
SAFE_REFERRER_POLICIES = (
    "no-referrer",
    "same-origin",
    "origin",
    "strict-origin",
    "origin-when-cross-origin",
    "strict-origin-when-cross-origin",
)
SWITCHES = (
    "STATEMODES_COOKIELESS_NOINDEX",
    "STATEMODES_COOKIELESS_BIND_USER_AGENT",
    "STATEMODES_REGENERATE_EXPIRED_SESSION_ID",
)
COOKIE_ENGINES = ("django.contrib.sessions.backends.signed_cookies", ENGINE_PREFIX + "off")
DEFAULT_MESSAGE_STORAGE = "django.contrib.messages.storage.fallback.FallbackStorage"
COOKIE_MESSAGE_STORAGES = (
    "django.contrib.messages.storage.cookie.CookieStorage",
    DEFAULT_MESSAGE_STORAGE,
)


def check_cookieless() -> list[CheckMessage]:
    """Check the cookieless settings, and what a session in the URL needs when it is on."""
    errors = _check_settings()
    # Only for a cookieless mode: a value that is no mode at all is E005's, reported alone.
    if conf.STATEMODES_COOKIELESS in ("UseUri", "AutoDetect") and not getattr(
        settings, "CSRF_USE_SESSIONS", False
    ):
        errors.append(
            Error(
                "Cookieless sessions need CSRF_USE_SESSIONS = True.",
                hint="Without cookies the CSRF cookie is missing too; keep the CSRF token in "
                "the session instead.",
                id="django_statemodes.E009",
            )
        )
    if conf.STATEMODES_COOKIELESS in ("UseUri", "AutoDetect"):
        errors.extend(_check_engine_and_middleware())
        errors.extend(_check_messages())
    return errors


def _check_settings() -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if conf.STATEMODES_COOKIELESS not in COOKIELESS_MODES:
        errors.append(
            Error(
                "STATEMODES_COOKIELESS should be 'UseCookies', 'UseUri' or 'AutoDetect', "
                f"not {conf.STATEMODES_COOKIELESS!r}.",
                id="django_statemodes.E005",
            )
        )
    policy = conf.STATEMODES_COOKIELESS_REFERRER_POLICY
    if policy is not None and policy not in SAFE_REFERRER_POLICIES:
        errors.append(
            Error(
                f"STATEMODES_COOKIELESS_REFERRER_POLICY {policy!r} would send session keys "
                "in Referer headers to other sites.",
                hint=f"Use one of {', '.join(SAFE_REFERRER_POLICIES)}, or None to send none.",
                id="django_statemodes.E050",
            )
        )
    errors += not_bools(SWITCHES, "django_statemodes.E051")
    return errors


def _check_engine_and_middleware() -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if settings.SESSION_ENGINE in COOKIE_ENGINES:
        errors.append(
            Error(
                f"Cookieless sessions need a server-side SESSION_ENGINE, not "
                f"{settings.SESSION_ENGINE!r}.",
                hint="A URL carries a session key, not session data: use "
                "'django_statemodes.backends.inproc' or another engine with a store.",
                id="django_statemodes.E052",
            )
        )
    if MIDDLEWARE not in settings.MIDDLEWARE:
        errors.append(
            Error(
                f"STATEMODES_COOKIELESS is {conf.STATEMODES_COOKIELESS!r} but {MIDDLEWARE} is "
                "not in MIDDLEWARE: no URL will carry a session.",
                hint=f"Replace {DJANGO_MIDDLEWARE} with {MIDDLEWARE}.",
                id="django_statemodes.E053",
            )
        )
    return errors


def _check_messages() -> list[CheckMessage]:
    storage = getattr(settings, "MESSAGE_STORAGE", DEFAULT_MESSAGE_STORAGE)
    messages = "django.contrib.messages" in settings.INSTALLED_APPS
    if not messages or storage not in COOKIE_MESSAGE_STORAGES:
        return []
    return [
        Warning(
            f"MESSAGE_STORAGE {storage!r} keeps messages in a cookie: clients without "
            "cookies lose them.",
            hint="Set MESSAGE_STORAGE = 'django.contrib.messages.storage.session.SessionStorage'.",
            id="django_statemodes.W050",
        )
    ]
