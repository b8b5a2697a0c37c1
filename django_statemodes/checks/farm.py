"""Checks of a state-server farm's settings: E064-E067, W061-W062.

Several ``;``-separated servers, the farm's other layout while it grows or shrinks
(``STATEMODES_STATE_NEXT_CONNECTION``, then ``STATEMODES_STATE_PREVIOUS_CONNECTION``), and how
long a server that timed out is refused (``STATEMODES_STATE_DOWN_INTERVAL``). The connection's
own syntax is E006 (``stateserver.py``).
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
CHANGE_HINT = (
    "A farm change rolls out in two steps: first STATEMODES_STATE_NEXT_CONNECTION names the new "
    "layout, then STATEMODES_STATE_CONNECTION is the new layout and "
    "STATEMODES_STATE_PREVIOUS_CONNECTION the old one, unset once every session has moved "
    "(docs/stateserver.md)."
)
#: The settings of a farm change's two steps: the layout left, the layout to come.
CHANGE_SETTINGS = ("STATEMODES_STATE_PREVIOUS_CONNECTION", "STATEMODES_STATE_NEXT_CONNECTION")


def check_farm() -> list[CheckMessage]:
    """Check the servers of a farm, the other layout of a change and the down interval."""
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
    given = [name for name in CHANGE_SETTINGS if getattr(conf, name) is not None]
    if len(given) > 1:
        errors.append(
            Error(
                "STATEMODES_STATE_PREVIOUS_CONNECTION and STATEMODES_STATE_NEXT_CONNECTION are "
                "both set: they are two steps of a farm change, and a web server is in one.",
                hint=CHANGE_HINT,
                id="django_statemodes.E067",
            )
        )
        return errors
    for name in given:
        _check_change(name, getattr(conf, name), current, errors)
    return errors


def _check_change(name: str, text: Any, current: list[Address], errors: list[CheckMessage]) -> None:
    """E064, W061 and W062 for the other layout of a change, in setting ``name``."""
    if conf.STATEMODES_PARTITION_RESOLVER:
        errors.append(
            Warning(
                f"{name} is ignored: STATEMODES_PARTITION_RESOLVER places the sessions.",
                hint="A custom resolver moves its own sessions; unset one of the two.",
                id="django_statemodes.W062",
            )
        )
        return
    try:
        if not isinstance(text, str):
            raise ValueError(f"a string is expected, not {type(text).__name__}")
        parse_connection(text)
    except ValueError as exc:
        errors.append(
            Error(f"{name} is not valid: {exc}.", hint=CHANGE_HINT, id="django_statemodes.E064")
        )
        return
    other = _layout(name, text, errors)
    if current and other and _places(current) == _places(other):
        errors.append(
            Warning(
                f"{name} places every session where STATEMODES_STATE_CONNECTION does: no "
                "session moves, and every miss costs a second look.",
                hint=CHANGE_HINT,
                id="django_statemodes.W061",
            )
        )


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
