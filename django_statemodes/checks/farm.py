"""Checks of a state-server farm's settings: E064-E066, W061-W062.

Several ``;``-separated servers, the farm's previous layout while it grows or shrinks
(``STATEMODES_STATE_PREVIOUS_CONNECTION``), and how long a server that timed out is refused
(``STATEMODES_STATE_DOWN_INTERVAL``). The connection's own syntax is E006 (``stateserver.py``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from django_statemodes.conf import conf
from django_statemodes.stateserver.addresses import (
    Address,
    endpoint,
    parse_connection,
    placement,
)

from .common import ENGINE_PREFIX

ENGINE = ENGINE_PREFIX + "stateserver"
PREVIOUS_HINT = (
    "Set it to the farm's layout before the change (the old STATEMODES_STATE_CONNECTION) while "
    "the change rolls out, and to None once every session has moved (docs/stateserver.md)."
)


def check_farm() -> list[CheckMessage]:
    """Check the servers of a farm, its previous layout and the down interval."""
    if settings.SESSION_ENGINE != ENGINE:
        return []
    errors: list[CheckMessage] = []
    interval: Any = conf.STATEMODES_STATE_DOWN_INTERVAL
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval >= 0:
        errors.append(
            Error(
                f"STATEMODES_STATE_DOWN_INTERVAL should be a number of seconds >= 0, not "
                f"{interval!r}.",
                hint="A few seconds (default 5); 0 never marks a server down.",
                id="django_statemodes.E066",
            )
        )
    current = _layout("STATEMODES_STATE_CONNECTION", conf.STATEMODES_STATE_CONNECTION, errors)
    previous_text: Any = conf.STATEMODES_STATE_PREVIOUS_CONNECTION
    if previous_text is None:
        return errors
    if conf.STATEMODES_PARTITION_RESOLVER:
        errors.append(
            Warning(
                "STATEMODES_STATE_PREVIOUS_CONNECTION is ignored: STATEMODES_PARTITION_RESOLVER "
                "places the sessions.",
                hint="A custom resolver moves its own sessions; unset one of the two.",
                id="django_statemodes.W062",
            )
        )
        return errors
    try:
        if not isinstance(previous_text, str):
            raise ValueError(f"a string is expected, not {type(previous_text).__name__}")
        parse_connection(previous_text)
    except ValueError as exc:
        errors.append(
            Error(
                f"STATEMODES_STATE_PREVIOUS_CONNECTION is not valid: {exc}.",
                hint=PREVIOUS_HINT,
                id="django_statemodes.E064",
            )
        )
        return errors
    previous = _layout("STATEMODES_STATE_PREVIOUS_CONNECTION", previous_text, errors)
    if current and previous and _places(current) == _places(previous):
        errors.append(
            Warning(
                "STATEMODES_STATE_PREVIOUS_CONNECTION places every session where "
                "STATEMODES_STATE_CONNECTION does: no session moves, and every miss costs "
                "a second look.",
                hint=PREVIOUS_HINT,
                id="django_statemodes.W061",
            )
        )
    return errors


def _layout(name: str, text: Any, errors: list[CheckMessage]) -> list[Address]:
    """Parse a farm layout; add E065 if it names one server twice. Bad syntax: E006's."""
    try:
        addresses = parse_connection(text)
    except (ValueError, AttributeError):
        return []
    seen: set[tuple[str, str]] = set()
    for address in addresses:
        for what, key in (("address", endpoint(address)), ("id", address.name)):
            if key and (what, key) in seen:
                errors.append(
                    Error(
                        f"{name} names the state server {what} {key!r} twice.",
                        hint="List each server once: it would take a double share of the "
                        "sessions, or two servers would share one place in the hashing.",
                        id="django_statemodes.E065",
                    )
                )
                return []
            seen.add((what, key))
    return addresses


def _places(addresses: list[Address]) -> set[str]:
    return {placement(address) for address in addresses}
