"""A small site for cookieless tests: a login form with CSRF, linked pages, redirects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [str(Path(__file__).parent / "templates")],
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]


def site_settings(mode: str) -> dict[str, Any]:
    """The settings that turn tests.settings into the cookieless site, in ``mode``."""
    return {
        "ROOT_URLCONF": "tests.cookielessapp.urls",
        "TEMPLATES": TEMPLATES,
        "STATEMODES_COOKIELESS": mode,
        # Without cookies there is no CSRF cookie either: the token lives in the session (E009).
        "CSRF_USE_SESSIONS": True,
        "MESSAGE_STORAGE": "django.contrib.messages.storage.session.SessionStorage",
        "LOGIN_URL": "login",
        # Relative, so that Django prefixes it with the script prefix (and caches it).
        "STATIC_URL": "static/",
    }
