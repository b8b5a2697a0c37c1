"""Checks of ``MIDDLEWARE``: W001, W002, E080."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from .common import ENGINE_PREFIX

MIDDLEWARE = "django_statemodes.middleware.SessionStateMiddleware"
DJANGO_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
# Django's middleware that read request.session in their request phase: listed before ours,
# they find no session and fail every request (Django's message then asks for SessionMiddleware).
SESSION_READERS = (
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.auth.middleware.RemoteUserMiddleware",
    "django.contrib.auth.middleware.PersistentRemoteUserMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
)
CSRF_MIDDLEWARE = "django.middleware.csrf.CsrfViewMiddleware"


def check_middleware() -> list[CheckMessage]:
    """Check that our engines run under SessionStateMiddleware, and Django's is gone."""
    errors: list[CheckMessage] = []
    engine = settings.SESSION_ENGINE
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
    if MIDDLEWARE in middleware:
        errors += _check_order(middleware)
    if MIDDLEWARE in middleware and DJANGO_MIDDLEWARE in middleware:
        errors.append(
            Warning(
                f"Both {MIDDLEWARE} and {DJANGO_MIDDLEWARE} are in MIDDLEWARE.",
                hint=f"Remove {DJANGO_MIDDLEWARE}: SessionStateMiddleware replaces it.",
                id="django_statemodes.W002",
            )
        )
    return errors


def _check_order(middleware: list[str]) -> list[CheckMessage]:
    """Check that no middleware that reads the session runs before ours."""
    readers = list(SESSION_READERS)
    if settings.CSRF_USE_SESSIONS:
        readers.append(CSRF_MIDDLEWARE)  # its request phase reads the token from the session
    ours = middleware.index(MIDDLEWARE)
    return [
        Error(
            f"{name} is listed before {MIDDLEWARE} in MIDDLEWARE, but it reads request.session, "
            "which SessionStateMiddleware sets: every request would fail.",
            hint=f"Move {MIDDLEWARE} above {name} (where Django's SessionMiddleware was).",
            id="django_statemodes.E080",
        )
        for name in middleware[:ours]
        if name in readers
    ]
