"""System checks of a state-server farm (E064-E066, W061-W062)."""

from __future__ import annotations

from typing import Any

import pytest

from django_statemodes.checks import check_settings
from django_statemodes.checks.farm import check_farm

ENGINE = "django_statemodes.backends.stateserver"
FARM = "tcpip=127.0.0.1:4001;tcpip=127.0.0.1:4002;tcpip=127.0.0.1:4003"


def ids() -> list[str | None]:
    return [message.id for message in check_farm()]


@pytest.fixture
def farm_settings(settings: Any) -> Any:
    settings.SESSION_ENGINE = ENGINE
    settings.STATEMODES_STATE_CONNECTION = FARM
    return settings


def test_a_farm_and_its_change_pass(farm_settings: Any) -> None:
    assert ids() == []
    farm_settings.STATEMODES_STATE_PREVIOUS_CONNECTION = "tcpip=127.0.0.1:4001;127.0.0.1:4002"
    farm_settings.STATEMODES_STATE_DOWN_INTERVAL = 0
    assert ids() == []


def test_other_engines_are_not_checked(settings: Any) -> None:
    settings.STATEMODES_STATE_DOWN_INTERVAL = "soon"
    assert ids() == []


@pytest.mark.parametrize("previous", ["", ";", "127.0.0.1:x", 42, "127.0.0.1:1#"])
def test_a_bad_previous_layout_is_e064(farm_settings: Any, previous: Any) -> None:
    farm_settings.STATEMODES_STATE_PREVIOUS_CONNECTION = previous
    assert ids() == ["django_statemodes.E064"]


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


def test_a_previous_layout_that_places_keys_alike_is_w061(farm_settings: Any) -> None:
    farm_settings.STATEMODES_STATE_PREVIOUS_CONNECTION = (
        "localhost:4003;127.0.0.1:4002;tcpip=LOCALHOST:4001"
    )
    assert ids() == ["django_statemodes.W061"]


def test_a_previous_layout_beside_a_custom_resolver_is_w062(farm_settings: Any) -> None:
    farm_settings.STATEMODES_PARTITION_RESOLVER = "any.Resolver"
    farm_settings.STATEMODES_STATE_PREVIOUS_CONNECTION = FARM
    assert ids() == ["django_statemodes.W062"]


def test_the_farm_checks_run_with_the_others(farm_settings: Any) -> None:
    farm_settings.STATEMODES_STATE_DOWN_INTERVAL = -1
    assert "django_statemodes.E066" in [message.id for message in check_settings()]
