"""Checks of the index of sessions by user (docs/sessions-by-user.md): E090-E092.

They run with the index off too: a wrong value is a mistake either way, better found before the
index is turned on than after.
"""

from __future__ import annotations

from django.core.checks import CheckMessage, Error

from django_statemodes.checks.common import not_bools
from django_statemodes.conf import conf

IP_CHOICES = ("truncated", "full", "off")

SWITCHES = (
    "STATEMODES_USER_INDEX",
    "STATEMODES_USER_INDEX_USER_AGENT",
    "STATEMODES_SIGN_OUT_EVERYWHERE_ON_PASSWORD_CHANGE",
)


def check_users() -> list[CheckMessage]:
    """Check the index's settings: how much of the IP it keeps, its interval, its switches."""
    errors: list[CheckMessage] = []
    ip: object = conf.STATEMODES_USER_INDEX_IP
    if ip not in IP_CHOICES:
        errors.append(
            Error(
                f"STATEMODES_USER_INDEX_IP should be 'truncated', 'full' or 'off', not {ip!r}.",
                hint="'truncated' (the default) keeps an IPv4 address's /24 and an IPv6 "
                "address's /48; 'off' keeps no address.",
                id="django_statemodes.E090",
            )
        )
    interval: object = conf.STATEMODES_USER_INDEX_INTERVAL
    # bool is an int subclass; NaN fails the comparison.
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval >= 0:
        errors.append(
            Error(
                "STATEMODES_USER_INDEX_INTERVAL should be a number of seconds, 0 or more, "
                f"not {interval!r}.",
                hint="How often a session's 'last seen' is written (default 300); 0 writes it "
                "on every request.",
                id="django_statemodes.E091",
            )
        )
    errors += not_bools(SWITCHES, "django_statemodes.E092")
    return errors
