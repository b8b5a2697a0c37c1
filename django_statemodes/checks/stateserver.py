"""Checks of StateServer mode's settings: E006, E020-E027.

They live here, not in ``django_statemodes/stateserver/``: that package is the state server's
own code too, which must import neither Django nor asgiref.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error
from django.utils.module_loading import import_string

from django_statemodes.conf import conf
from django_statemodes.stateserver.addresses import Address, parse_connection
from django_statemodes.stateserver.options import MIN_SECRET_BYTES, SECRET_HINT
from django_statemodes.stateserver.server import is_loopback
from django_statemodes.stateserver.tls import client_context

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
    errors.extend(_check_tls(addresses, resolver=bool(path)))
    return errors


TLS_SETTINGS = ("STATEMODES_STATE_TLS_CA", "STATEMODES_STATE_TLS_CERT", "STATEMODES_STATE_TLS_KEY")
TLS_HINT = "See 'TLS and per-application secrets' in the state server documentation."


def _check_tls(addresses: list[Address], *, resolver: bool) -> list[CheckMessage]:
    """E024-E027: the TLS files exist and load, and match the tls= addresses."""
    values: dict[str, Any] = {name: getattr(conf, name) for name in TLS_SETTINGS}
    errors: list[CheckMessage] = []
    for name, value in values.items():
        if value is None:
            continue
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            problem = "should be None or the path of a PEM file"
        else:
            try:
                with open(value, "rb"):
                    continue
            except OSError as exc:
                problem = f"names {os.fspath(value)!r}, which cannot be read ({exc.strerror})"
        errors.append(Error(f"{name} {problem}.", hint=TLS_HINT, id="django_statemodes.E024"))
    tls = [str(a) for a in addresses if a.tls]
    ca, cert, key = (values[name] for name in TLS_SETTINGS)
    if tls and ca is None:
        errors.append(
            Error(
                f"STATEMODES_STATE_CONNECTION names TLS state servers ({', '.join(tls)}) but "
                "STATEMODES_STATE_TLS_CA is not set.",
                hint="Set it to the CA file (PEM) that signed the servers' --tls-cert; only that "
                "CA is trusted, never the system's public ones.",
                id="django_statemodes.E025",
            )
        )
    if key is not None and cert is None:
        errors.append(
            Error(
                "STATEMODES_STATE_TLS_KEY is set but STATEMODES_STATE_TLS_CERT is not.",
                hint="Set the client certificate too, or remove the key.",
                id="django_statemodes.E026",
            )
        )
    elif not tls and not resolver and any(v is not None for v in values.values()):
        # The user believes the link is encrypted; it is not.
        errors.append(
            Error(
                "STATEMODES_STATE_TLS_* settings are set but no address in "
                "STATEMODES_STATE_CONNECTION uses TLS: sessions cross the network in clear.",
                hint="Write the addresses as 'tls=host:port', or remove the TLS settings.",
                id="django_statemodes.E026",
            )
        )
    if not errors and isinstance(ca, (str, os.PathLike)):
        try:
            client_context(os.fspath(ca), cert, key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            errors.append(
                Error(
                    f"The state server TLS files do not load: {exc}.",
                    hint="STATEMODES_STATE_TLS_CA must hold PEM certificates, "
                    "STATEMODES_STATE_TLS_CERT a PEM certificate and STATEMODES_STATE_TLS_KEY "
                    "its matching private key (unencrypted).",
                    id="django_statemodes.E027",
                )
            )
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
