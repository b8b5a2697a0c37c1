"""Checks of the capacity settings (issue 12): connections per process, a session's threads."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from django_statemodes.checks import check_settings


def ids() -> list[str]:
    return [message.id for message in check_settings() if message.id]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"STATEMODES_MAX_CONNECTIONS": 0}, "django_statemodes.E014"),
        ({"STATEMODES_MAX_CONNECTIONS": "10"}, "django_statemodes.E014"),
        ({"STATEMODES_MAX_CONNECTIONS": True}, "django_statemodes.E014"),
        ({"STATEMODES_CONNECTION_WAIT": 0}, "django_statemodes.E015"),
        ({"STATEMODES_CONNECTION_WAIT": "5"}, "django_statemodes.E015"),
        ({"STATEMODES_CONNECTION_IDLE_TIMEOUT": -1}, "django_statemodes.E016"),
        ({"STATEMODES_CONNECTION_IDLE_TIMEOUT": None}, "django_statemodes.E016"),
        ({"STATEMODES_LOCK_WAITING_THREADS": 0}, "django_statemodes.E017"),
        ({"STATEMODES_LOCK_WAITING_THREADS": 2.5}, "django_statemodes.E017"),
        ({"STATEMODES_LOCK_WAITING_THREADS": True}, "django_statemodes.E017"),
    ],
)
def test_a_bad_capacity_setting_is_reported(overrides: dict[str, Any], expected: str) -> None:
    with override_settings(**overrides):
        assert ids() == [expected]


@pytest.mark.parametrize(
    "overrides",
    [
        {"STATEMODES_MAX_CONNECTIONS": 1},
        {"STATEMODES_CONNECTION_WAIT": 0.5, "STATEMODES_CONNECTION_IDLE_TIMEOUT": 300},
        {"STATEMODES_LOCK_WAITING_THREADS": None},
        {"STATEMODES_LOCK_WAITING_THREADS": 3},
    ],
)
def test_good_capacity_settings_pass(overrides: dict[str, Any]) -> None:
    with override_settings(**overrides):
        assert ids() == []
