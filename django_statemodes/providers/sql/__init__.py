"""SQL mode's providers: ASP.NET's session-state tables through a Django ``DATABASES`` alias.

One module per dialect (``postgresql``, ``mysql``, ``sqlite``) holds its statements, column types and
provider class; ``base`` holds what they share, ``schema`` the tables. A new dialect is one new
module, named in ``DIALECTS`` under its Django ``vendor``.
"""

from __future__ import annotations

from django.db import connections

from django_statemodes.exceptions import SessionStoreUnavailable

from .base import SETTING, SQLStateProvider
from .ddl import dialect
from .schema import DIALECTS

__all__ = ["DIALECTS", "SQLStateProvider", "provider_for"]


def provider_for(alias: str) -> SQLStateProvider:
    """Return the SQL provider for a ``DATABASES`` alias, by its engine."""
    vendor = connections[alias].vendor
    if vendor not in DIALECTS:
        raise SessionStoreUnavailable(
            f"SQL session state supports PostgreSQL, MySQL, MariaDB and SQLite; database "
            f"{alias!r} is {vendor}.",
            setting=SETTING,
        )
    return dialect(vendor)(alias)
