"""Checks of names a typo breaks silently: W081 (a ``STATEMODES_*`` setting that does not exist),
E082 (a ``SESSION_ENGINE`` that does not import). Both suggest the nearest right name."""

from __future__ import annotations

import difflib
from importlib import import_module

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from django_statemodes.conf import Settings

from .common import ENGINE_PREFIX

PREFIX = "STATEMODES_"
# The engines a SESSION_ENGINE typo is most likely meant to be: ours and Django's.
ENGINES = [
    *(ENGINE_PREFIX + name for name in ("inproc", "stateserver", "sql", "custom", "off")),
    *(
        "django.contrib.sessions.backends." + name
        for name in ("db", "cache", "cached_db", "file", "signed_cookies")
    ),
]


def known_settings() -> list[str]:
    """Every ``STATEMODES_*`` setting the package reads (the properties of ``conf``)."""
    return sorted(name for name in vars(Settings) if name.startswith(PREFIX))


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"Did you mean {close[0]!r}? " if close else ""


def check_names() -> list[CheckMessage]:
    """Check the ``STATEMODES_*`` names in settings and the ``SESSION_ENGINE`` path."""
    errors: list[CheckMessage] = []
    known = known_settings()
    for name in sorted(dir(settings)):
        # Django's own settings object lists every setting of the project, defaults included.
        if name.startswith(PREFIX) and name not in known:
            errors.append(
                Warning(
                    f"{name} is not a django-statemodes setting: it is ignored.",
                    hint=_did_you_mean(name, known) + "The settings are listed in the "
                    "documentation's settings page.",
                    id="django_statemodes.W081",
                )
            )
    engine: object = settings.SESSION_ENGINE
    if isinstance(engine, str):
        try:
            import_module(engine)
        except ImportError as exc:
            errors.append(
                Error(
                    f"SESSION_ENGINE {engine!r} cannot be imported ({exc}).",
                    hint=_did_you_mean(engine, ENGINES) + "Use the dotted path of an engine "
                    f"module, such as {ENGINE_PREFIX}stateserver.",
                    id="django_statemodes.E082",
                )
            )
    return errors
