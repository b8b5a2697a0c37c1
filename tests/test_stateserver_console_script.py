"""The installed console script ``statemodes-stateserver`` serves, and reports its stats."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES, free_port
from tests.fixtures_stateserver import wait_for_port

SCRIPT = Path(sys.executable).parent / "statemodes-stateserver"


@pytest.fixture
def script() -> Path:
    if not SCRIPT.exists():
        message = f"{SCRIPT} is not installed (pip install -e . makes it)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    return SCRIPT


def test_the_console_script_serves_and_reports_stats(script: Path) -> None:
    port = free_port()
    server = subprocess.Popen([str(script), "--port", str(port)], stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        stats = subprocess.run(
            [str(script), "--stats", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert stats.returncode == 0, stats.stderr
        assert "sessions" in stats.stdout
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert server.returncode == 0  # SIGTERM is a graceful shutdown
    assert server.stderr is not None and b"127.0.0.1:" in server.stderr.read()
