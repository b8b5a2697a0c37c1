"""StateServer mode: sessions in a separate state server process (ASP.NET StateServer).

``STATEMODES_STATE_CONNECTION`` names the server (several ``;``-separated servers partition
sessions). The store is ``providers.stateserver.StateServerProvider``.
"""

from __future__ import annotations

from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.providers.base import SessionStateProvider
from django_statemodes.providers.stateserver import StateServerProvider

__all__ = ["SessionStore"]


class SessionStore(StateModeSessionBase):
    """Keep session data in the state server (ASP.NET StateServer)."""

    @classmethod
    def create_provider(cls) -> SessionStateProvider:
        return StateServerProvider()
