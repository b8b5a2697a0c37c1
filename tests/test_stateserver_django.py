"""Django's own session tests against the StateServer engine and a real state server process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import override_settings

from django_statemodes.backends.stateserver import SessionStore
from tests.django_suite import make_django_suite
from tests.fixtures_stateserver import StateServerProcess

pytestmark = [pytest.mark.stateserver, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def live_stateserver() -> Iterator[StateServerProcess]:
    with StateServerProcess() as server:
        overrides = override_settings(
            STATEMODES_STATE_CONNECTION=server.connection, STATEMODES_STATE_NETWORK_TIMEOUT=5
        )
        overrides.enable()
        try:
            yield server
        finally:
            overrides.disable()


StateServerSessionTests, StateServerMiddlewareTests = make_django_suite(
    "django_statemodes.backends.stateserver", SessionStore
)
