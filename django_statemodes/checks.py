"""System checks for the ``STATEMODES_*`` settings (ids ``django_statemodes.E0NN``/``W0NN``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.db import connections

from django_statemodes.conf import conf
from django_statemodes.modes import MODES
from django_statemodes.stateserver.addresses import parse_connection

ENGINE_PREFIX = "django_statemodes.backends."
MIDDLEWARE = "django_statemodes.middleware.SessionStateMiddleware"
DJANGO_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
COOKIELESS_MODES = ("UseCookies", "UseUri", "AutoDetect")


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    engine = settings.SESSION_ENGINE

    if conf.STATEMODES_DEFAULT_ACCESS not in MODES:
        errors.append(
            Error(
                "STATEMODES_DEFAULT_ACCESS should be 'ReadWrite', 'ReadOnly' or 'Disabled'.",
                hint="ASP.NET's <pages enableSessionState> true / ReadOnly / false.",
                id="django_statemodes.E001",
            )
        )
    if not _positive_number(conf.STATEMODES_STATE_NETWORK_TIMEOUT):
        errors.append(
            Error(
                "STATEMODES_STATE_NETWORK_TIMEOUT should be a positive number of seconds.",
                id="django_statemodes.E002",
            )
        )
    if not _positive_number(conf.STATEMODES_LOCK_TIMEOUT):
        errors.append(
            Error(
                "STATEMODES_LOCK_TIMEOUT should be a positive number of seconds.",
                hint="ASP.NET's default is 110 (executionTimeout).",
                id="django_statemodes.E003",
            )
        )
    if not _positive_int(conf.STATEMODES_LOCK_QUEUE_LIMIT):
        errors.append(
            Error(
                "STATEMODES_LOCK_QUEUE_LIMIT should be a positive integer.",
                id="django_statemodes.E004",
            )
        )
    if conf.STATEMODES_COOKIELESS not in COOKIELESS_MODES:
        errors.append(
            Error(
                "STATEMODES_COOKIELESS should be 'UseCookies', 'UseUri' or 'AutoDetect'.",
                id="django_statemodes.E005",
            )
        )
    if engine == ENGINE_PREFIX + "stateserver":
        try:
            parse_connection(conf.STATEMODES_STATE_CONNECTION)
        except (ValueError, AttributeError) as exc:
            errors.append(
                Error(
                    f"STATEMODES_STATE_CONNECTION is not valid: {exc}.",
                    hint="Use 'tcpip=127.0.0.1:42424'; separate several servers with ';'.",
                    id="django_statemodes.E006",
                )
            )
    if engine == ENGINE_PREFIX + "custom":
        errors.extend(_check_custom_provider())
    if engine == ENGINE_PREFIX + "sql":
        from django_statemodes.providers.sql.checks import check_sql_settings

        errors.extend(check_sql_settings())
    if engine == ENGINE_PREFIX + "sql" and conf.STATEMODES_SQL_DATABASE not in connections:
        errors.append(
            Error(
                f"STATEMODES_SQL_DATABASE {conf.STATEMODES_SQL_DATABASE!r} is not in DATABASES.",
                hint="Name an alias of DATABASES; run 'manage.py installsqlstate' for it.",
                id="django_statemodes.E008",
            )
        )
    if conf.STATEMODES_COOKIELESS != "UseCookies" and not getattr(
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
    errors.extend(_check_cookieless())
    name: object = conf.STATEMODES_APPLICATION_NAME
    if not isinstance(name, str) or not name or len(name) > 280:
        errors.append(
            Error(
                "STATEMODES_APPLICATION_NAME should be a non-empty string of at most 280 characters.",
                hint="Give every site that shares a store the same explicit name.",
                id="django_statemodes.E010",
            )
        )
    if not _positive_int(conf.STATEMODES_MAX_SESSION_SIZE):
        errors.append(
            Error(
                "STATEMODES_MAX_SESSION_SIZE should be a positive number of bytes.",
                id="django_statemodes.E011",
            )
        )
    compression: object = conf.STATEMODES_COMPRESSION
    if not isinstance(compression, bool):
        errors.append(
            Error("STATEMODES_COMPRESSION should be a bool.", id="django_statemodes.E012")
        )
    if not _positive_int(conf.STATEMODES_INPROC_MAX_SESSIONS):
        errors.append(
            Error(
                "STATEMODES_INPROC_MAX_SESSIONS should be a positive integer.",
                id="django_statemodes.E013",
            )
        )

    middleware = list(settings.MIDDLEWARE)
    if engine.startswith(ENGINE_PREFIX) and MIDDLEWARE not in middleware:
        errors.append(
            Warning(
                f"SESSION_ENGINE is {engine!r} but {MIDDLEWARE} is not in MIDDLEWARE: "
                "sessions will not be locked and per-view modes are ignored.",
                hint=f"Replace {DJANGO_MIDDLEWARE} with {MIDDLEWARE}.",
                id="django_statemodes.W001",
            )
        )
    if MIDDLEWARE in middleware and DJANGO_MIDDLEWARE in middleware:
        errors.append(
            Warning(
                f"Both {MIDDLEWARE} and {DJANGO_MIDDLEWARE} are in MIDDLEWARE.",
                hint=f"Remove {DJANGO_MIDDLEWARE}: SessionStateMiddleware replaces it.",
                id="django_statemodes.W002",
            )
        )
    return errors


def _check_custom_provider() -> list[CheckMessage]:
    from django_statemodes.core.registry import load_provider_class
    from django_statemodes.exceptions import PROVIDER_HINT as HINT
    from django_statemodes.exceptions import ProviderNotFound

    try:
        provider = load_provider_class(conf.STATEMODES_CUSTOM_PROVIDER)
    except ProviderNotFound as exc:
        return [Error(exc.args[0], hint=HINT, id="django_statemodes.E007")]
    # A provider may check its own options (RedisProvider: E040-E049).
    provider_check = getattr(provider, "check", None)
    if callable(provider_check):
        return list(provider_check(conf.STATEMODES_CUSTOM_PROVIDER_OPTIONS))
    return []


# Referrer policies that never send a URL's path to another site (a cookieless URL holds a key).
SAFE_REFERRER_POLICIES = (
    "no-referrer",
    "same-origin",
    "origin",
    "strict-origin",
    "origin-when-cross-origin",
    "strict-origin-when-cross-origin",
)
COOKIE_ENGINES = ("django.contrib.sessions.backends.signed_cookies", ENGINE_PREFIX + "off")
COOKIE_MESSAGE_STORAGES = (
    "django.contrib.messages.storage.cookie.CookieStorage",
    "django.contrib.messages.storage.fallback.FallbackStorage",
)


def _check_cookieless() -> list[CheckMessage]:
    """Checks E050-E053 and W050: cookieless sessions (docs/cookieless.md)."""
    errors: list[CheckMessage] = []
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
    for name in (
        "STATEMODES_COOKIELESS_NOINDEX",
        "STATEMODES_COOKIELESS_BIND_USER_AGENT",
        "STATEMODES_REGENERATE_EXPIRED_SESSION_ID",
    ):
        if not isinstance(getattr(conf, name), bool):
            errors.append(Error(f"{name} should be a bool.", id="django_statemodes.E051"))
    if conf.STATEMODES_COOKIELESS not in ("UseUri", "AutoDetect"):
        return errors
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
    storage = getattr(
        settings, "MESSAGE_STORAGE", "django.contrib.messages.storage.fallback.FallbackStorage"
    )
    if "django.contrib.messages" in settings.INSTALLED_APPS and storage in COOKIE_MESSAGE_STORAGES:
        errors.append(
            Warning(
                f"MESSAGE_STORAGE {storage!r} keeps messages in a cookie: clients without "
                "cookies lose them.",
                hint="Set MESSAGE_STORAGE = "
                "'django.contrib.messages.storage.session.SessionStorage'.",
                id="django_statemodes.W050",
            )
        )
    return errors
