"""Checks of ``SESSION_SERIALIZER`` for the engines that serialize sessions: E060, E061.

A pickle-based serializer lets anyone who can write to the session store (the state server's
port, the SQL table, the Redis database) run code in every web worker that loads the planted
session: ``pickle.loads`` calls whatever the payload names. Django's own ``PickleSerializer``
was removed in Django 5.0 for that reason; a site's own class can still bring it back.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error
from django.utils.module_loading import import_string

from django_statemodes.conf import conf
from django_statemodes.core.registry import load_provider_class
from django_statemodes.exceptions import ProviderNotFound

from .common import ENGINE_PREFIX

# Engines whose sessions go through SESSION_SERIALIZER (InProc keeps objects, Off stores none).
SERIALIZING_ENGINES = frozenset(ENGINE_PREFIX + name for name in ("stateserver", "sql", "custom"))
PICKLE = "pickle"  # matches pickle, cPickle, cloudpickle, jsonpickle...


def check_serializer() -> list[CheckMessage]:
    """Refuse a pickle-based ``SESSION_SERIALIZER`` unless the risk is acknowledged."""
    allow: object = conf.STATEMODES_ALLOW_PICKLE_SERIALIZER
    if not isinstance(allow, bool):
        return [
            Error(
                "STATEMODES_ALLOW_PICKLE_SERIALIZER should be a bool.",
                id="django_statemodes.E061",
            )
        ]
    path: object = settings.SESSION_SERIALIZER
    if allow or not isinstance(path, str) or not _serializes(settings.SESSION_ENGINE):
        return []
    if not uses_pickle(path):
        return []
    return [
        Error(
            f"SESSION_SERIALIZER {path!r} uses pickle: anyone who can write to the session "
            "store can run code in every web process that loads a session (pickle.loads "
            "executes what the payload names).",
            hint="Use django.core.signing.JSONSerializer (Django's default) and store plain "
            "data. If only trusted code can ever write to the store, acknowledge the risk "
            "with STATEMODES_ALLOW_PICKLE_SERIALIZER = True.",
            id="django_statemodes.E060",
        )
    ]


def _serializes(engine: object) -> bool:
    if engine not in SERIALIZING_ENGINES:
        return False
    if engine != ENGINE_PREFIX + "custom":
        return True
    try:
        provider = load_provider_class(conf.STATEMODES_CUSTOM_PROVIDER)
    except ProviderNotFound:
        return True  # E007 reports it; the serializer is checked as if it were used
    return not provider.stores_objects


def uses_pickle(path: str) -> bool:
    """Say whether the serializer at ``path`` is pickle-based, by name.

    Pickle is recognised where a name says so: the dotted path, the module or name of any class
    the serializer inherits from, or a name its ``dumps`` / ``loads`` use (``pickle.loads``).
    A serializer that hides pickle behind other names is not found.
    """
    if PICKLE in path.lower():
        return True
    try:
        serializer: Any = import_string(path)
    except Exception:  # a check never crashes manage.py check
        return False  # Django reports an unimportable SESSION_SERIALIZER on first use
    for cls in getattr(serializer, "__mro__", (serializer,)):
        if PICKLE in f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', '')}".lower():
            return True
    for method in ("dumps", "loads"):
        code = getattr(getattr(serializer, method, None), "__code__", None)
        if code is not None and any(PICKLE in name.lower() for name in code.co_names):
            return True
    return False
