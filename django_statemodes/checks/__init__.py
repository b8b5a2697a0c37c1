"""System checks for the ``STATEMODES_*`` settings (ids ``django_statemodes.E0NN``/``W0NN``).

One module per mode or feature; ``check_settings``, registered by ``apps.py``, runs them all
where the app is installed. Mode-specific checks return nothing unless their mode is the
``SESSION_ENGINE``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.apps import AppConfig, apps
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
from .users import check_users

__all__ = ["CHECKS", "check_settings"]

APP = "django_statemodes"

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
    check_users,
)


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Run every check of ``CHECKS``, for a site that installs the app.

    A registered check stays registered: a site whose ``INSTALLED_APPS`` are overridden to leave
    the package out (a test's ``override_settings``) is checked for nothing, and neither is
    ``manage.py check other_app``.
    """
    if not apps.is_installed(APP):
        return []
    if app_configs is not None and not any(config.name == APP for config in app_configs):
        return []
    return [message for check in CHECKS for message in check()]
