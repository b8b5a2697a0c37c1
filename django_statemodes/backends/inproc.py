"""InProc mode: sessions in this process's memory, as live Python objects (ASP.NET InProc).

The fastest mode: no serialization, lost when the process restarts, private to one process, so
only correct with one worker process (ASP.NET's "web garden" caveat). The store is
``providers.inproc.InProcProvider``.
"""

from __future__ import annotations

from typing import ClassVar

from django_statemodes.conf import conf
from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.providers.base import ExpiredItem, SessionStateProvider
from django_statemodes.providers.inproc import InProcProvider

__all__ = ["SessionStore"]


class SessionStore(StateModeSessionBase):
    """Keep session data in this process's memory (ASP.NET InProc)."""

    provider_settings: ClassVar[frozenset[str]] = frozenset({"STATEMODES_INPROC_MAX_SESSIONS"})

    @classmethod
    def create_provider(cls) -> SessionStateProvider:
        # One store per process for the whole life of the process: settings changes in tests
        # must not wipe it, so it is built once and only its bound follows the setting.
        _provider.store.max_items = conf.STATEMODES_INPROC_MAX_SESSIONS
        return _provider


def _send_end(item: ExpiredItem, reason: str) -> None:
    SessionStore._expired(item, reason)


_provider = InProcProvider(on_expired=_send_end)
