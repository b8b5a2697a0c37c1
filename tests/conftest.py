"""Shared test helpers: real services at 127.0.0.1, never mocks.

PostgreSQL (127.0.0.1:5432, user root, database test) and Redis (127.0.0.1:6379) are used for
real. Locally a missing service skips its tests with a reason; with STATEMODES_REQUIRE_SERVICES=1
(CI) a missing service fails them instead.

The shared fixtures of SQL mode (tests/fixtures_sql.py) and of the state server
(tests/fixtures_stateserver.py) are registered once here, as plugins: a test module names them
as arguments and imports only the plain constants and helpers it uses.
"""

from __future__ import annotations

import os
import socket

import pytest

pytest_plugins = ["tests.fixtures_sql", "tests.fixtures_stateserver"]

REQUIRE_SERVICES = os.environ.get("STATEMODES_REQUIRE_SERVICES") == "1"


def service_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    """Skip (or, when services are required, fail) unless the service answers."""
    if service_up(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (STATEMODES_REQUIRE_SERVICES=1)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def postgres() -> None:
    need_service("PostgreSQL", "127.0.0.1", 5432)


@pytest.fixture
def redis_server() -> None:
    need_service("Redis", "127.0.0.1", 6379)
