"""System checks for the ``STATEMODES_*`` settings (ids ``django_statemodes.E0NN``/``W0NN``).

One module per mode or feature; ``check_settings``, registered by ``apps.py``, runs them all.
Mode-specific checks return nothing unless their mode is the ``SESSION_ENGINE``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage

from .common import check_common
from .cookieless import check_cookieless
from .custom import check_custom
from .farm import check_farm
from .inproc import check_inproc
from .middleware import check_middleware
from .names import check_names
from .serializer import check_serializer
from .sql import check_sql
from .stateserver import check_stateserver
from .unavailable import check_unavailable

__all__ = ["CHECKS", "check_settings"]

CHECKS: tuple[Callable[[], list[CheckMessage]], ...] = (
    check_names,
    check_common,
    check_cookieless,
    check_inproc,
    check_stateserver,
    check_farm,
    check_sql,
    check_custom,
    check_middleware,
    check_serializer,
    check_unavailable,
)


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Run every check of ``CHECKS``."""
    return [message for check in CHECKS for message in check()]
