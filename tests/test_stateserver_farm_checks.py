"""System checks of a state-server farm (E064-E067, W061-W062)."""

from __future__ import annotations

from typing import Any

import pytest

from django_statemodes.checks import check_settings
from django_statemodes.checks.farm import check_farm

ENGINE = "django_statemodes.backends.stateserver"
FARM = "tcpip=127.0.0.1:4001;tcpip=127.0.0.1:4002;tcpip=127.0.0.1:4003"
#: The two steps of a farm change, each naming the other layout.
STEPS = ["STATEMODES_STATE_PREVIOUS_CONNECTION", "STATEMODES_STATE_NEXT_CONNECTION"]


def ids() -> list[str | None]:
    return [message.id for message in check_farm()]


@pytest.fixture
def farm_settings(settings: Any) -> Any:
    settings.SESSION_ENGINE = ENGINE
    settings.STATEMODES_STATE_CONNECTION = FARM
    return settings


@pytest.mark.parametrize("step", STEPS)
def test_a_farm_and_its_change_pass(farm_settings: Any, step: str) -> None:
    assert ids() == []
    setattr(farm_settings, step, "tcpip=127.0.0.1:4001;127.0.0.1:4002")
    farm_settings.STATEMODES_STATE_DOWN_INTERVAL = 0
    assert ids() == []


def test_other_engines_are_not_checked(settings: Any) -> None:
    settings.STATEMODES_STATE_DOWN_INTERVAL = "soon"
    assert ids() == []


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("other", ["", ";", "127.0.0.1:x", 42, "127.0.0.1:1#"])
def test_a_bad_other_layout_is_e064(farm_settings: Any, step: str, other: Any) -> None:
    setattr(farm_settings, step, other)
    messages = check_farm()
    assert [message.id for message in messages] == ["django_statemodes.E064"]
    assert step in messages[0].msg


@pytest.mark.parametrize(
    "connection",
    [
        "tcpip=127.0.0.1:4001;tcpip=localhost:4001",  # one server, spelled twice
        "tcpip=10.0.0.5:4001#s1;tcpip=10.0.0.6:4001#s1",  # two servers, one id
        "tcpip=127.0.0.1:4001#a;127.0.0.1:4001#b",  # one server under two ids
    ],
)
def test_a_server_listed_twice_is_e065(farm_settings: Any, connection: str) -> None:
    farm_settings.STATEMODES_STATE_CONNECTION = connection
    assert ids() == ["django_statemodes.E065"]
    farm_settings.STATEMODES_STATE_CONNECTION = FARM
    farm_settings.STATEMODES_STATE_PREVIOUS_CONNECTION = connection
    assert ids() == ["django_statemodes.E065"]


@pytest.mark.parametrize("interval", [-1, "5", None, True, float("nan")])
def test_a_bad_down_interval_is_e066(farm_settings: Any, interval: Any) -> None:
    farm_settings.STATEMODES_STATE_DOWN_INTERVAL = interval
    assert ids() == ["django_statemodes.E066"]


@pytest.mark.parametrize("step", STEPS)
def test_an_other_layout_that_places_keys_alike_is_w061(farm_settings: Any, step: str) -> None:
    setattr(farm_settings, step, "localhost:4003;127.0.0.1:4002;tcpip=LOCALHOST:4001")
    assert ids() == ["django_statemodes.W061"]


@pytest.mark.parametrize("step", STEPS)
def test_an_other_layout_beside_a_custom_resolver_is_w062(farm_settings: Any, step: str) -> None:
    farm_settings.STATEMODES_PARTITION_RESOLVER = "any.Resolver"
    setattr(farm_settings, step, FARM)
    assert ids() == ["django_statemodes.W062"]


def test_both_steps_of_a_change_at_once_are_e067(farm_settings: Any) -> None:
    farm_settings.STATEMODES_STATE_PREVIOUS_CONNECTION = "tcpip=127.0.0.1:4001"
    farm_settings.STATEMODES_STATE_NEXT_CONNECTION = "tcpip=127.0.0.1:4001;127.0.0.1:4004"
    assert ids() == ["django_statemodes.E067"]


def test_the_farm_checks_run_with_the_others(farm_settings: Any) -> None:
    farm_settings.STATEMODES_STATE_DOWN_INTERVAL = -1
    assert "django_statemodes.E066" in [message.id for message in check_settings()]
