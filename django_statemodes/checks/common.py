"""Checks of the settings every mode reads: E001-E004, E010-E012, E014-E017."""

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


def not_bools(names: tuple[str, ...], check_id: str) -> list[CheckMessage]:
    """An error ``check_id``, echoing the value, for each of the ``names`` that is not a bool."""
    return [
        Error(f"{name} should be a bool, not {value!r}.", id=check_id)
        for name in names
        if not isinstance(value := getattr(conf, name), bool)
    ]


def check_common() -> list[CheckMessage]:
    """Check the locking settings and the store-wide ones."""
    return [*_check_locking(), *_check_store(), *_check_capacity()]


def _check_locking() -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if conf.STATEMODES_DEFAULT_ACCESS not in MODES:
        errors.append(
            Error(
                "STATEMODES_DEFAULT_ACCESS should be 'ReadWrite', 'ReadOnly' or 'Disabled', "
                f"not {conf.STATEMODES_DEFAULT_ACCESS!r}.",
                hint="ASP.NET's <pages enableSessionState> true / ReadOnly / false.",
                id="django_statemodes.E001",
            )
        )
    if not positive_number(conf.STATEMODES_STATE_NETWORK_TIMEOUT):
        errors.append(
            Error(
                "STATEMODES_STATE_NETWORK_TIMEOUT should be a positive number of seconds, "
                f"not {conf.STATEMODES_STATE_NETWORK_TIMEOUT!r}.",
                id="django_statemodes.E002",
            )
        )
    if not positive_number(conf.STATEMODES_LOCK_TIMEOUT):
        errors.append(
            Error(
                "STATEMODES_LOCK_TIMEOUT should be a positive number of seconds, "
                f"not {conf.STATEMODES_LOCK_TIMEOUT!r}.",
                hint="ASP.NET's default is 110 (executionTimeout).",
                id="django_statemodes.E003",
            )
        )
    if not positive_int(conf.STATEMODES_LOCK_QUEUE_LIMIT):
        errors.append(
            Error(
                "STATEMODES_LOCK_QUEUE_LIMIT should be a positive integer, "
                f"not {conf.STATEMODES_LOCK_QUEUE_LIMIT!r}.",
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
                "STATEMODES_APPLICATION_NAME should be a non-empty string of at most 280 "
                f"characters, not {name!r}.",
                hint="Give every site that shares a store the same explicit name.",
                id="django_statemodes.E010",
            )
        )
    if not positive_int(conf.STATEMODES_MAX_SESSION_SIZE):
        errors.append(
            Error(
                "STATEMODES_MAX_SESSION_SIZE should be a positive number of bytes, "
                f"not {conf.STATEMODES_MAX_SESSION_SIZE!r}.",
                id="django_statemodes.E011",
            )
        )
    errors += not_bools(("STATEMODES_COMPRESSION",), "django_statemodes.E012")
    return errors


def _check_capacity() -> list[CheckMessage]:
    """The bounds of a process: store connections and the threads one session's waiters hold."""
    errors: list[CheckMessage] = []
    if not positive_int(conf.STATEMODES_MAX_CONNECTIONS):
        errors.append(
            Error(
                "STATEMODES_MAX_CONNECTIONS should be a positive integer, "
                f"not {conf.STATEMODES_MAX_CONNECTIONS!r}.",
                hint="Store connections per process and store; the default is 10.",
                id="django_statemodes.E014",
            )
        )
    if not positive_number(conf.STATEMODES_CONNECTION_WAIT):
        errors.append(
            Error(
                "STATEMODES_CONNECTION_WAIT should be a positive number of seconds, "
                f"not {conf.STATEMODES_CONNECTION_WAIT!r}.",
                hint="How long a request waits for a free store connection before its 503.",
                id="django_statemodes.E015",
            )
        )
    if not positive_number(conf.STATEMODES_CONNECTION_IDLE_TIMEOUT):
        errors.append(
            Error(
                "STATEMODES_CONNECTION_IDLE_TIMEOUT should be a positive number of seconds, "
                f"not {conf.STATEMODES_CONNECTION_IDLE_TIMEOUT!r}.",
                id="django_statemodes.E016",
            )
        )
    threads: object = conf.STATEMODES_LOCK_WAITING_THREADS
    if threads is not None and not positive_int(threads):
        errors.append(
            Error(
                "STATEMODES_LOCK_WAITING_THREADS should be None or a positive integer, "
                f"not {conf.STATEMODES_LOCK_WAITING_THREADS!r}.",
                hint="None derives it: half of the most requests a process has served at once.",
                id="django_statemodes.E017",
            )
        )
    return errors
