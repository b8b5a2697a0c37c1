"""Custom mode: any ``SessionStateProvider`` subclass named by a setting.

Like ASP.NET ``mode="Custom"`` with ``customProvider``: the class named by
``STATEMODES_CUSTOM_PROVIDER`` is imported and built with the keyword arguments in
``STATEMODES_CUSTOM_PROVIDER_OPTIONS`` (the attributes of ASP.NET's ``<providers><add/>``). The
session core gives it the same locking, access modes and signals as every built-in mode.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from django_statemodes.conf import conf
from django_statemodes.providers.base import SessionStateProvider

from .base import StateModeSessionBase

HINT = (
    "Set STATEMODES_CUSTOM_PROVIDER to the dotted path of a SessionStateProvider subclass, "
    "e.g. 'django_statemodes.providers.redis.RedisProvider'."
)


class ProviderNotFound(ImproperlyConfigured):
    """Raised when ``STATEMODES_CUSTOM_PROVIDER`` does not name a provider class.

    ``args[0]`` is the problem alone (what system check E007 reports, with ``HINT`` as its hint);
    ``str()`` adds the hint.
    """

    def __str__(self) -> str:
        return f"{self.args[0]} {HINT}"


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


class SessionStore(StateModeSessionBase):
    """Keep session data in the provider named by ``STATEMODES_CUSTOM_PROVIDER``."""

    @classmethod
    def create_provider(cls) -> SessionStateProvider:
        provider_class = load_provider_class(conf.STATEMODES_CUSTOM_PROVIDER)
        options = conf.STATEMODES_CUSTOM_PROVIDER_OPTIONS
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
