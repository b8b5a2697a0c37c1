"""An engine whose store is unreachable (tests of the 503 page)."""

from __future__ import annotations

from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.providers.base import SessionStateProvider
from tests.engines import DownProvider


class SessionStore(StateModeSessionBase):
    @classmethod
    def create_provider(cls) -> SessionStateProvider:
        return DownProvider()
