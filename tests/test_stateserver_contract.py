"""The conformance kit (django_statemodes.testing) over the StateServer provider and engine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from django_statemodes.backends.stateserver import SessionStore
from django_statemodes.providers.stateserver import StateServerProvider
from django_statemodes.testing import EngineContract, ProviderContract
from tests.fixtures_stateserver import StateServerProcess

pytestmark = [pytest.mark.stateserver]


class TestStateServerProvider(ProviderContract):
    @pytest.fixture
    def provider(self, stateserver: StateServerProcess) -> Iterator[StateServerProvider]:
        provider = StateServerProvider(connection=stateserver.connection, timeout=5)
        yield provider
        provider.close()


class TestStateServerEngine(EngineContract):
    @pytest.fixture
    def engine(self, stateserver: StateServerProcess, settings: Any) -> type[SessionStore]:
        settings.STATEMODES_STATE_CONNECTION = stateserver.connection
        settings.STATEMODES_STATE_NETWORK_TIMEOUT = 5
        return SessionStore
