"""The state server killed, hung and restarted under a running web farm."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.farm import Browser, WebServer
from tests.fixtures_stateserver import StateServerProcess

pytestmark = [pytest.mark.stateserver, pytest.mark.slow]

NETWORK_TIMEOUT = 2.0


def _unavailable(user: Browser, server: StateServerProcess) -> float:
    """Make one request while the state server is gone; return how long the 503 took."""
    started = time.monotonic()
    status, body = user.get("/incr")
    elapsed = time.monotonic() - started
    assert status == 503, body
    assert "Session state is unavailable" in body
    # DEBUG is off: visitors are not told the store's address or settings (the log is).
    assert "STATEMODES_STATE_CONNECTION" not in body
    assert f"127.0.0.1:{server.port}" not in body
    return elapsed


def test_a_stopped_state_server_gives_503_and_a_restart_with_snapshot_keeps_sessions(
    tmp_path: Path,
) -> None:
    server = StateServerProcess("--snapshot", str(tmp_path / "sessions.snap")).start()
    try:
        with WebServer(server.connection, workers=2) as web:
            user = Browser(web.port)
            assert [user.counter() for _ in range(3)] == [1, 2, 3]
            assert server.stop() == 0  # SIGTERM: graceful, the snapshot is written
            for _ in range(4):  # each worker, with and without a kept connection
                assert _unavailable(user, server) < NETWORK_TIMEOUT + 1
            server.start()
            # The web processes reconnect by themselves; the session came back from disk.
            assert user.counter() == 4
            assert user.counter("/count") == 4
    finally:
        server.stop()


def test_periodic_snapshots_keep_sessions_over_a_sigkill(tmp_path: Path) -> None:
    snapshot = tmp_path / "sessions.snap"
    server = StateServerProcess("--snapshot", str(snapshot), "--snapshot-interval", "0.2").start()
    try:
        with WebServer(server.connection) as web:
            user = Browser(web.port)
            assert user.counter() == 1
            assert user.counter() == 2
            time.sleep(1.0)  # at least one periodic snapshot after the last write
            server.kill()
            assert _unavailable(user, server) < NETWORK_TIMEOUT + 1
            server.start()
            assert user.counter() == 3
    finally:
        server.stop()


def test_a_hung_state_server_gives_503_within_the_network_timeout() -> None:
    server = StateServerProcess().start()
    try:
        with WebServer(server.connection, FARM_NETWORK_TIMEOUT=str(NETWORK_TIMEOUT)) as web:
            user = Browser(web.port)
            assert user.counter() == 1
            server.signal(signal.SIGSTOP)  # alive, connected, never answering
            try:
                elapsed = _unavailable(user, server)
                assert elapsed >= NETWORK_TIMEOUT * 0.9  # the network timeout, not at once
            finally:
                server.signal(signal.SIGCONT)
            assert user.counter() == 2
    finally:
        server.stop()


def test_a_state_server_without_snapshot_starts_empty_and_new_sessions_work() -> None:
    server = StateServerProcess().start()
    try:
        with WebServer(server.connection) as web:
            user = Browser(web.port)
            assert user.counter() == 1
            server.kill()
            server.start()
            old_cookie = user.cookie
            # ASP.NET StateServer loses everything on restart; the stale key is never adopted.
            assert user.counter() == 1
            assert user.cookie != old_cookie
    finally:
        server.stop()
