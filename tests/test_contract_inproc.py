"""The conformance kit (django_statemodes.testing) over InProc: provider and engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from django_statemodes.backends.inproc import InProcProvider, SessionStore
from django_statemodes.testing import EngineContract, ProviderContract


class TestInProcProvider(ProviderContract):
    @pytest.fixture
    def provider(self) -> Iterator[InProcProvider]:
        yield InProcProvider()


class TestInProcEngine(EngineContract):
    @pytest.fixture
    def engine(self) -> type[SessionStore]:
        return SessionStore
