"""System checks of StateServer mode (E006, E020-E023)."""

from __future__ import annotations

from typing import Any

import pytest

from django_statemodes.checks.stateserver import check_stateserver

ENGINE = "django_statemodes.backends.stateserver"


class GoodResolver:
    def resolve_partition(self, session_key: str) -> str:
        return "tcpip=127.0.0.1:42424"

    def partitions(self) -> list[str]:
        return ["tcpip=127.0.0.1:42424"]


def ids(settings: Any) -> list[str | None]:
    return [message.id for message in check_stateserver()]


@pytest.fixture
def stateserver_settings(settings: Any) -> Any:
    settings.SESSION_ENGINE = ENGINE
    return settings


def test_the_default_loopback_setup_passes(stateserver_settings: Any) -> None:
    assert ids(stateserver_settings) == []


def test_other_engines_are_not_checked(settings: Any) -> None:
    settings.STATEMODES_STATE_SECRET = ""
    assert ids(settings) == []


@pytest.mark.parametrize("path", ["no.such.Resolver", f"{__name__}.ids"])
def test_a_bad_partition_resolver_is_e020(stateserver_settings: Any, path: str) -> None:
    stateserver_settings.STATEMODES_PARTITION_RESOLVER = path
    assert ids(stateserver_settings) == ["django_statemodes.E020"]


def test_a_good_partition_resolver_passes(stateserver_settings: Any) -> None:
    stateserver_settings.STATEMODES_PARTITION_RESOLVER = f"{__name__}.GoodResolver"
    assert ids(stateserver_settings) == []


@pytest.mark.parametrize("secret", ["", "   ", 42])
def test_an_empty_or_non_string_secret_is_e021(stateserver_settings: Any, secret: Any) -> None:
    stateserver_settings.STATEMODES_STATE_SECRET = secret
    assert ids(stateserver_settings) == ["django_statemodes.E021"]


def test_a_remote_server_without_a_secret_is_e022(stateserver_settings: Any) -> None:
    stateserver_settings.STATEMODES_STATE_CONNECTION = (
        "tcpip=127.0.0.1:42424;tcpip=state.example:42424"
    )
    assert ids(stateserver_settings) == ["django_statemodes.E022"]
    stateserver_settings.STATEMODES_STATE_SECRET = "s3cret-" + "x" * 25
    assert ids(stateserver_settings) == []


@pytest.mark.parametrize("secret", ["s3cret", "x" * 31, "  " + "x" * 31 + "  "])
def test_a_secret_shorter_than_32_bytes_is_e023(stateserver_settings: Any, secret: str) -> None:
    # The state server refuses such a secret at start (Redis asks for long random passwords).
    stateserver_settings.STATEMODES_STATE_SECRET = secret
    assert ids(stateserver_settings) == ["django_statemodes.E023"]
    message = check_stateserver()[0]
    assert message.hint is not None and "secrets.token_urlsafe(32)" in message.hint


def test_a_secret_of_32_bytes_passes(stateserver_settings: Any) -> None:
    stateserver_settings.STATEMODES_STATE_SECRET = "x" * 32
    assert ids(stateserver_settings) == []


def test_a_connection_that_is_not_a_string_is_e006_alone(stateserver_settings: Any) -> None:
    # Not a crash of the E022 check, which needs the parsed addresses.
    stateserver_settings.STATEMODES_STATE_CONNECTION = None
    assert ids(stateserver_settings) == ["django_statemodes.E006"]
