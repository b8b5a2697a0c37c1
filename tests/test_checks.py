from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_statemodes.checks import check_settings


def ids() -> list[str]:
    return [message.id for message in check_settings() if message.id]


def test_the_default_settings_pass() -> None:
    assert ids() == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"STATEMODES_DEFAULT_ACCESS": "readonly"}, "django_statemodes.E001"),
        ({"STATEMODES_STATE_NETWORK_TIMEOUT": "10"}, "django_statemodes.E002"),
        ({"STATEMODES_STATE_NETWORK_TIMEOUT": 0}, "django_statemodes.E002"),
        ({"STATEMODES_LOCK_TIMEOUT": -1}, "django_statemodes.E003"),
        ({"STATEMODES_LOCK_QUEUE_LIMIT": 0}, "django_statemodes.E004"),
        ({"STATEMODES_LOCK_QUEUE_LIMIT": True}, "django_statemodes.E004"),
        ({"STATEMODES_COOKIELESS": "true"}, "django_statemodes.E005"),
        (
            {
                "SESSION_ENGINE": "django_statemodes.backends.stateserver",
                "STATEMODES_STATE_CONNECTION": "tcpip=127.0.0.1:notaport",
            },
            "django_statemodes.E006",
        ),
        ({"SESSION_ENGINE": "django_statemodes.backends.custom"}, "django_statemodes.E007"),
        (
            {
                "SESSION_ENGINE": "django_statemodes.backends.custom",
                "STATEMODES_CUSTOM_PROVIDER": "no.such.Provider",
            },
            "django_statemodes.E007",
        ),
        (
            {
                "SESSION_ENGINE": "django_statemodes.backends.custom",
                "STATEMODES_CUSTOM_PROVIDER": "django_statemodes.conf.Settings",
            },
            "django_statemodes.E007",
        ),
        (
            {
                "SESSION_ENGINE": "django_statemodes.backends.sql",
                "STATEMODES_SQL_DATABASE": "nope",
            },
            "django_statemodes.E008",
        ),
        ({"STATEMODES_COOKIELESS": "UseUri"}, "django_statemodes.E009"),
        ({"STATEMODES_APPLICATION_NAME": ""}, "django_statemodes.E010"),
        ({"STATEMODES_MAX_SESSION_SIZE": "1MB"}, "django_statemodes.E011"),
        ({"STATEMODES_COMPRESSION": "yes"}, "django_statemodes.E012"),
        ({"STATEMODES_INPROC_MAX_SESSIONS": 0}, "django_statemodes.E013"),
        ({"STATEMODES_USER_INDEX_IP": "partial"}, "django_statemodes.E090"),
        ({"STATEMODES_USER_INDEX_IP": None}, "django_statemodes.E090"),
        ({"STATEMODES_USER_INDEX_INTERVAL": -1}, "django_statemodes.E091"),
        ({"STATEMODES_USER_INDEX_INTERVAL": "300"}, "django_statemodes.E091"),
        ({"STATEMODES_USER_INDEX_INTERVAL": True}, "django_statemodes.E091"),
        ({"STATEMODES_USER_INDEX_INTERVAL": float("nan")}, "django_statemodes.E091"),
        ({"STATEMODES_USER_INDEX": "False"}, "django_statemodes.E092"),
        ({"STATEMODES_USER_INDEX_USER_AGENT": 0}, "django_statemodes.E092"),
        ({"STATEMODES_SIGN_OUT_EVERYWHERE_ON_PASSWORD_CHANGE": "yes"}, "django_statemodes.E092"),
        ({"MIDDLEWARE": []}, "django_statemodes.W001"),
        (
            {
                "MIDDLEWARE": [
                    "django.contrib.sessions.middleware.SessionMiddleware",
                    "django_statemodes.middleware.SessionStateMiddleware",
                ]
            },
            "django_statemodes.W002",
        ),
    ],
)
def test_each_misconfiguration_has_its_id(overrides: dict[str, object], expected: str) -> None:
    with override_settings(**overrides):
        assert expected in ids()


def test_cookieless_with_csrf_in_sessions_passes() -> None:
    with override_settings(STATEMODES_COOKIELESS="UseUri", CSRF_USE_SESSIONS=True):
        assert "django_statemodes.E009" not in ids()


@pytest.mark.parametrize("value", ["truncated", "full", "off"])
def test_each_user_index_ip_choice_passes(value: str) -> None:
    with override_settings(STATEMODES_USER_INDEX=True, STATEMODES_USER_INDEX_IP=value):
        assert ids() == []


@pytest.mark.parametrize("value", [0, 2.5, 3600])
def test_a_user_index_interval_of_zero_or_more_passes(value: float) -> None:
    with override_settings(STATEMODES_USER_INDEX_INTERVAL=value):
        assert ids() == []


def test_the_user_index_errors_name_the_setting_and_its_value() -> None:
    with override_settings(
        STATEMODES_USER_INDEX_IP="Truncated",
        STATEMODES_USER_INDEX_INTERVAL=-5,
        STATEMODES_SIGN_OUT_EVERYWHERE_ON_PASSWORD_CHANGE="no",
    ):
        messages = {m.id: m.msg for m in check_settings()}
    assert messages == {
        "django_statemodes.E090": "STATEMODES_USER_INDEX_IP should be 'truncated', 'full' or "
        "'off', not 'Truncated'.",
        "django_statemodes.E091": "STATEMODES_USER_INDEX_INTERVAL should be a number of "
        "seconds, 0 or more, not -5.",
        "django_statemodes.E092": "STATEMODES_SIGN_OUT_EVERYWHERE_ON_PASSWORD_CHANGE should be "
        "a bool, not 'no'.",
    }


def test_errors_have_hints_where_a_fix_is_known() -> None:
    with override_settings(SESSION_ENGINE="django_statemodes.backends.custom"):
        (error,) = [m for m in check_settings() if m.id == "django_statemodes.E007"]
    assert error.hint is not None and "RedisProvider" in error.hint


def test_the_check_command_fails_on_an_error() -> None:
    with override_settings(STATEMODES_LOCK_TIMEOUT="long"), pytest.raises(SystemCheckError):
        # databases=[]: Django 6.1 runs model checks against every alias by default, which
        # opens connections; the settings checks need none.
        call_command("check", databases=[])
