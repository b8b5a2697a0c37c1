"""Checks of StateServer mode's settings: E006, E020-E023.

They live here, not in ``django_statemodes/stateserver/``: that package is the state server's
own code too, which must import neither Django nor asgiref.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error
from django.utils.module_loading import import_string

from django_statemodes.conf import conf
from django_statemodes.stateserver.addresses import Address, parse_connection
from django_statemodes.stateserver.options import MIN_SECRET_BYTES, SECRET_HINT
from django_statemodes.stateserver.server import is_loopback

from .common import ENGINE_PREFIX

ENGINE = ENGINE_PREFIX + "stateserver"
RESOLVER_HINT = (
    "Set STATEMODES_PARTITION_RESOLVER to the dotted path of a class with "
    "resolve_partition(session_key) -> 'tcpip=host:port' and partitions() -> list."
)


def check_stateserver() -> list[CheckMessage]:
    """Check the connection, the secret and the partition resolver in StateServer mode."""
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
    elif secret is not None and len(secret.strip().encode()) < MIN_SECRET_BYTES:
        # The state server refuses such a secret at start (options.strong_secret): say so at
        # the web side too, before a deploy finds out (Redis's requirepass: long and random).
        errors.append(
            Error(
                f"STATEMODES_STATE_SECRET is shorter than {MIN_SECRET_BYTES} bytes; the state "
                "server refuses it, and a short secret falls to an offline search of one "
                "captured handshake.",
                hint=f"Use at least {MIN_SECRET_BYTES} random bytes: {SECRET_HINT}",
                id="django_statemodes.E023",
            )
        )
    try:
        addresses = parse_connection(conf.STATEMODES_STATE_CONNECTION)
    except (ValueError, AttributeError) as exc:
        addresses = []
        errors.append(
            Error(
                f"STATEMODES_STATE_CONNECTION is not valid: {exc}.",
                hint="Use 'tcpip=127.0.0.1:42424'; separate several servers with ';'.",
                id="django_statemodes.E006",
            )
        )
    path = conf.STATEMODES_PARTITION_RESOLVER
    if path:
        # A resolver makes STATEMODES_STATE_CONNECTION ignored, so its hosts need no secret.
        errors.extend(_check_resolver(path))
    else:
        errors.extend(_check_remote(addresses, secret))
    return errors


def _check_remote(addresses: list[Address], secret: Any) -> list[CheckMessage]:
    remote = [str(a) for a in addresses if not is_loopback(a.host)]
    if not remote or secret:
        return []
    return [
        Error(
            f"STATEMODES_STATE_CONNECTION names a state server on another machine "
            f"({', '.join(remote)}) but STATEMODES_STATE_SECRET is not set.",
            hint="A remote state server runs with --allow-remote and a shared secret; set "
            "STATEMODES_STATE_SECRET to that secret.",
            id="django_statemodes.E022",
        )
    ]


def _check_resolver(path: Any) -> list[CheckMessage]:
    try:
        resolver = import_string(path) if isinstance(path, str) else None
    except ImportError as exc:
        message = f"STATEMODES_PARTITION_RESOLVER {path!r} cannot be imported: {exc}."
        return [Error(message, hint=RESOLVER_HINT, id="django_statemodes.E020")]
    if not (
        isinstance(resolver, type)
        and callable(getattr(resolver, "resolve_partition", None))
        and callable(getattr(resolver, "partitions", None))
    ):
        message = f"STATEMODES_PARTITION_RESOLVER {path!r} is not a partition resolver class."
        return [Error(message, hint=RESOLVER_HINT, id="django_statemodes.E020")]
    return []
