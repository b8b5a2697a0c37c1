"""Each engine's provider: built once per process, rebuilt when a setting it reads changes.

An engine names its provider through ``create_provider()``; this module calls it at most once
per engine and settings, and closes and forgets the provider when ``override_settings`` (or any
``setting_changed``) touches a setting the provider or its engine declared (``settings`` on the
provider class, ``provider_settings`` on the engine). Settings the core reads on every use need
no rebuild, and a provider that keeps sessions in the process (InProc, a dict-backed Custom
provider) is not emptied by a change that does not concern it.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Protocol

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from django_statemodes.exceptions import ProviderNotFound
from django_statemodes.providers.base import SessionStateProvider

__all__ = ["Engine", "build_provider", "close_all", "load_provider_class", "provider_for"]


class Engine(Protocol):
    """What the registry needs of an engine's ``SessionStore`` class."""

    provider_settings: ClassVar[frozenset[str]]

    @classmethod
    def create_provider(cls) -> SessionStateProvider: ...


#: Engine class -> its provider; read directly on the hot path, written only under ``_mutex``.
providers: dict[type[Any], SessionStateProvider] = {}
_mutex = threading.Lock()


def provider_for(engine: type[Engine]) -> SessionStateProvider:
    """Return the engine's provider, building it on first use."""
    try:
        return providers[engine]
    except KeyError:
        with _mutex:
            if engine not in providers:
                providers[engine] = engine.create_provider()
            return providers[engine]


def _forget(engines: list[type[Any]]) -> None:
    with _mutex:
        closing = [providers.pop(engine) for engine in engines if engine in providers]
    for provider in closing:
        provider.close()


def close_all() -> None:
    """Close and forget every provider (the next use builds them again)."""
    _forget(list(providers))


@receiver(setting_changed)
def _rebuild(*, setting: str, **kwargs: Any) -> None:
    # Providers are built from settings once; override_settings in tests needs a rebuild.
    stale = [
        engine
        for engine, provider in list(providers.items())
        if setting in provider.settings or setting in getattr(engine, "provider_settings", ())
    ]
    if stale:
        _forget(stale)


# Custom mode: a provider class by dotted path (django-redis's CLIENT_CLASS pattern).


def load_provider_class(path: str | None) -> type[SessionStateProvider]:
    """Import the provider class named by ``path``, or raise ``ProviderNotFound``."""
    if not path or not isinstance(path, str):
        raise ProviderNotFound(
            "SESSION_ENGINE is 'django_statemodes.backends.custom' but "
            "STATEMODES_CUSTOM_PROVIDER is not set."
        )
    try:
        provider_class = import_string(path)
    except ImportError as exc:
        raise ProviderNotFound(
            f"STATEMODES_CUSTOM_PROVIDER {path!r} cannot be imported: {exc}."
        ) from exc
    if not (isinstance(provider_class, type) and issubclass(provider_class, SessionStateProvider)):
        raise ProviderNotFound(
            f"STATEMODES_CUSTOM_PROVIDER {path!r} is not a SessionStateProvider subclass."
        )
    return provider_class


def build_provider(path: str | None, options: Any) -> SessionStateProvider:
    """Build the provider class at ``path`` with the keyword arguments ``options``."""
    provider_class = load_provider_class(path)
    if not isinstance(options, dict):
        raise ImproperlyConfigured(
            "STATEMODES_CUSTOM_PROVIDER_OPTIONS should be a dict of keyword arguments for "
            f"{provider_class.__name__}, not {type(options).__name__}."
        )
    try:
        return provider_class(**options)
    except TypeError as exc:
        # A misspelt option: name the setting, not just the constructor's signature.
        raise ImproperlyConfigured(
            f"{provider_class.__name__} does not accept STATEMODES_CUSTOM_PROVIDER_OPTIONS "
            f"{sorted(options)}: {exc}."
        ) from exc
