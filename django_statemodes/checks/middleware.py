"""Checks of ``MIDDLEWARE``: W001, W002."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import CheckMessage, Warning

from .common import ENGINE_PREFIX

MIDDLEWARE = "django_statemodes.middleware.SessionStateMiddleware"
DJANGO_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"


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
    if MIDDLEWARE in middleware and DJANGO_MIDDLEWARE in middleware:
        errors.append(
            Warning(
                f"Both {MIDDLEWARE} and {DJANGO_MIDDLEWARE} are in MIDDLEWARE.",
                hint=f"Remove {DJANGO_MIDDLEWARE}: SessionStateMiddleware replaces it.",
                id="django_statemodes.W002",
            )
        )
    return errors
