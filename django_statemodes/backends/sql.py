"""SQL mode (ASP.NET ``SQLServer``): sessions in a database named by ``STATEMODES_SQL_DATABASE``.

Tables installed by ``manage.py installsqlstate``; the store is the dialect's provider in
``providers.sql`` (PostgreSQL, MySQL/MariaDB or SQLite).
"""

from __future__ import annotations

from django_statemodes.conf import conf
from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.providers.base import SessionStateProvider
from django_statemodes.providers.sql import provider_for

__all__ = ["SessionStore"]


class SessionStore(StateModeSessionBase):
    """Keep session data in ASP.NET's session-state tables (ASP.NET SQLServer mode)."""

    @classmethod
    def create_provider(cls) -> SessionStateProvider:
        return provider_for(conf.STATEMODES_SQL_DATABASE)
