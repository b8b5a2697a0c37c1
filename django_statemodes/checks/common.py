"""Checks of the settings every mode reads: E001-E004, E010-E012."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error

from django_statemodes.conf import conf
from django_statemodes.modes import MODES

ENGINE_PREFIX = "django_statemodes.backends."


def positive_number(value: Any) -> bool:
    # bool is an int subclass; True must not pass for 1.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_common() -> list[CheckMessage]:
    """Check the locking settings and the store-wide ones."""
    return [*_check_locking(), *_check_store()]


def _check_locking() -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if conf.STATEMODES_DEFAULT_ACCESS not in MODES:
        errors.append(
            Error(
                "STATEMODES_DEFAULT_ACCESS should be 'ReadWrite', 'ReadOnly' or 'Disabled'.",
                hint="ASP.NET's <pages enableSessionState> true / ReadOnly / false.",
                id="django_statemodes.E001",
            )
        )
    if not positive_number(conf.STATEMODES_STATE_NETWORK_TIMEOUT):
        errors.append(
            Error(
                "STATEMODES_STATE_NETWORK_TIMEOUT should be a positive number of seconds.",
                id="django_statemodes.E002",
            )
        )
    if not positive_number(conf.STATEMODES_LOCK_TIMEOUT):
        errors.append(
            Error(
                "STATEMODES_LOCK_TIMEOUT should be a positive number of seconds.",
                hint="ASP.NET's default is 110 (executionTimeout).",
                id="django_statemodes.E003",
            )
        )
    if not positive_int(conf.STATEMODES_LOCK_QUEUE_LIMIT):
        errors.append(
            Error(
                "STATEMODES_LOCK_QUEUE_LIMIT should be a positive integer.",
                id="django_statemodes.E004",
            )
        )
    return errors


def _check_store() -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    name: object = conf.STATEMODES_APPLICATION_NAME
    if not isinstance(name, str) or not name or len(name) > 280:
        errors.append(
            Error(
                "STATEMODES_APPLICATION_NAME should be a non-empty string of at most 280 characters.",
                hint="Give every site that shares a store the same explicit name.",
                id="django_statemodes.E010",
            )
        )
    if not positive_int(conf.STATEMODES_MAX_SESSION_SIZE):
        errors.append(
            Error(
                "STATEMODES_MAX_SESSION_SIZE should be a positive number of bytes.",
                id="django_statemodes.E011",
            )
        )
    compression: object = conf.STATEMODES_COMPRESSION
    if not isinstance(compression, bool):
        errors.append(
            Error("STATEMODES_COMPRESSION should be a bool.", id="django_statemodes.E012")
        )
    return errors
