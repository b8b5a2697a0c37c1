"""Custom mode: any ``SessionStateProvider`` subclass named by a setting.

Like ASP.NET ``mode="Custom"`` with ``customProvider``: the class named by
``STATEMODES_CUSTOM_PROVIDER`` is imported and built with the keyword arguments in
``STATEMODES_CUSTOM_PROVIDER_OPTIONS`` (the attributes of ASP.NET's ``<providers><add/>``). The
session core gives it the same locking, access modes and signals as every built-in mode.
"""

from __future__ import annotations

from typing import ClassVar

from django_statemodes.conf import conf
from django_statemodes.core import registry
from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.providers.base import SessionStateProvider

__all__ = ["SessionStore"]


class SessionStore(StateModeSessionBase):
    """Keep session data in the provider named by ``STATEMODES_CUSTOM_PROVIDER``."""

    provider_settings: ClassVar[frozenset[str]] = frozenset(
        {"STATEMODES_CUSTOM_PROVIDER", "STATEMODES_CUSTOM_PROVIDER_OPTIONS"}
    )

    @classmethod
    def create_provider(cls) -> SessionStateProvider:
        return registry.build_provider(
            conf.STATEMODES_CUSTOM_PROVIDER, conf.STATEMODES_CUSTOM_PROVIDER_OPTIONS
        )
