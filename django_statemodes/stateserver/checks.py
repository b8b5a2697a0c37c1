"""System checks of StateServer mode (ids ``django_statemodes.E020``-``E029``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error
from django.utils.module_loading import import_string

from django_statemodes.conf import conf

from .addresses import parse_connection
from .server import is_loopback

ENGINE = "django_statemodes.backends.stateserver"


def check_stateserver(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    if settings.SESSION_ENGINE != ENGINE:
        return []
    errors: list[CheckMessage] = []
    secret: Any = conf.STATEMODES_STATE_SECRET  # any type: a user may set anything
    if secret is not None and not (isinstance(secret, str) and secret.strip()):
        errors.append(
            Error(
                "STATEMODES_STATE_SECRET should be None or a non-empty string.",
                hint="The same secret as the state server's --secret-file.",
                id="django_statemodes.E021",
            )
        )
    path = conf.STATEMODES_PARTITION_RESOLVER
    if path:
        errors.extend(_check_resolver(path))
        return errors
    try:
        addresses = parse_connection(conf.STATEMODES_STATE_CONNECTION)
    except ValueError:
        return errors  # reported as E006
    remote = [str(a) for a in addresses if not is_loopback(a.host)]
    if remote and not secret:
        errors.append(
            Error(
                f"STATEMODES_STATE_CONNECTION names a state server on another machine "
                f"({', '.join(remote)}) but STATEMODES_STATE_SECRET is not set.",
                hint="A remote state server runs with --allow-remote and a shared secret; set "
                "STATEMODES_STATE_SECRET to that secret.",
                id="django_statemodes.E022",
            )
        )
    return errors


def _check_resolver(path: Any) -> list[CheckMessage]:
    hint = (
        "Set STATEMODES_PARTITION_RESOLVER to the dotted path of a class with "
        "resolve_partition(session_key) -> 'tcpip=host:port' and partitions() -> list."
    )
    try:
        resolver = import_string(path) if isinstance(path, str) else None
    except ImportError as exc:
        message = f"STATEMODES_PARTITION_RESOLVER {path!r} cannot be imported: {exc}."
        return [Error(message, hint=hint, id="django_statemodes.E020")]
    if not (
        isinstance(resolver, type)
        and callable(getattr(resolver, "resolve_partition", None))
        and callable(getattr(resolver, "partitions", None))
    ):
        message = f"STATEMODES_PARTITION_RESOLVER {path!r} is not a partition resolver class."
        return [Error(message, hint=hint, id="django_statemodes.E020")]
    return []
