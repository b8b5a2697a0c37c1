"""Checks of names a typo breaks silently: W081 (a ``STATEMODES_*`` setting that does not exist),
E082 (a ``SESSION_ENGINE`` that does not import), E083 (a ``STATEMODES_IMPORT_FROM`` that is not
an engine sessions can move from). Each suggests the nearest right name."""

from __future__ import annotations

import difflib
from importlib import import_module

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from django_statemodes.conf import Settings, conf

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
    errors.extend(_check_import_from(engine))
    return errors


def _check_import_from(engine: object) -> list[CheckMessage]:
    source: object = conf.STATEMODES_IMPORT_FROM
    if source is None:
        return []
    hint = "Name the engine the site used before, such as 'django.contrib.sessions.backends.db'."
    if not isinstance(source, str):
        problem = f"must be the dotted path of a session engine, not {source!r}."
    elif source == engine:
        problem = f"is the SESSION_ENGINE itself ({source!r}): there is nothing to move."
        hint = "Remove the setting, or name the engine the site used before."
    elif source == "django.contrib.sessions.backends.signed_cookies":
        problem = (
            f"is {source!r}: those sessions live in the browser, under a key that is the "
            "session itself, and cannot move into a store."
        )
        hint = "Remove the setting: users of signed cookies sign in again after the switch."
    else:
        try:
            module = import_module(source)
        except ImportError as exc:
            problem = f"{source!r} cannot be imported ({exc})."
            hint = _did_you_mean(source, ENGINES) + hint
        else:
            if hasattr(module, "SessionStore"):
                return []
            problem = f"{source!r} is not a session engine: it has no SessionStore class."
    return [Error(f"STATEMODES_IMPORT_FROM {problem}", hint=hint, id="django_statemodes.E083")]
