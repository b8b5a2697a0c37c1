"""Running the state server in production: strong secrets, a clear "address in use", the demo port.

Each test starts a real ``python -m django_statemodes.stateserver`` (or ``manage.py
runstateserver``) process; nothing is mocked.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from django_statemodes.stateserver.addresses import Address
from django_statemodes.stateserver.client import StateServerClient
from tests.conftest import free_port
from tests.fixtures_stateserver import StateServerProcess

pytestmark = [pytest.mark.stateserver]

ROOT = Path(__file__).resolve().parent.parent
GENERATE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
# What Linux uses when /proc/sys/net/ipv4/ip_local_port_range is absent (its default since 2.6).
LINUX_EPHEMERAL = (32768, 60999)


def run_main(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "django_statemodes.stateserver", *args]
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=full_env)


def run_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``manage.py runstateserver`` (``python -m django``) with the farm test site's settings."""
    full_env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        DJANGO_SETTINGS_MODULE="tests.farmapp.settings",
        FARM_STATE_CONNECTION="tcpip=127.0.0.1:1",
        **(env or {}),
    )
    command = [sys.executable, "-m", "django", "runstateserver", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, env=full_env, cwd=ROOT
    )


# Secrets: Redis's requirepass documentation asks for a long random password because a short
# one falls to an offline search of one captured handshake (issue 13: 4 characters in 1.8 s).


@pytest.mark.parametrize("secret", ["s", "correct horse battery stapl", "x" * 31])
def test_a_secret_file_shorter_than_32_bytes_is_refused(tmp_path: Path, secret: str) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret + "\n")
    result = run_main(
        "--port", str(free_port()), "--allow-remote", "--secret-file", str(secret_file)
    )
    assert result.returncode == 2, result.stderr
    assert "32 bytes" in result.stderr
    assert GENERATE in result.stderr


def test_a_secret_from_the_environment_shorter_than_32_bytes_is_refused() -> None:
    result = run_main("--port", str(free_port()), env={"STATEMODES_STATE_SECRET": "short"})
    assert result.returncode == 2, result.stderr
    assert "32 bytes" in result.stderr and GENERATE in result.stderr


def test_runstateserver_refuses_a_short_secret_too() -> None:
    result = run_command(
        f"127.0.0.1:{free_port()}", env={"STATEMODES_STATE_SECRET": "only-20-bytes-long.."}
    )
    assert result.returncode != 0
    assert "32 bytes" in result.stderr and GENERATE in result.stderr


def test_a_secret_of_32_bytes_is_accepted(tmp_path: Path) -> None:
    secret = "k" * 32
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret)
    with StateServerProcess("--allow-remote", "--secret-file", str(secret_file)) as server:
        client = StateServerClient(
            Address("127.0.0.1", server.port), timeout=5, secret=secret.encode()
        )
        try:
            assert client.ping(b"ok") == b"ok"
        finally:
            client.close()


# "Address already in use": the default port 42424 (ASP.NET's) lies in Linux's ephemeral range,
# so a client socket of any other connection may hold it. The message says so and what to do.


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def ephemeral_range() -> tuple[int, int]:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
    except OSError:
        return LINUX_EPHEMERAL
    low, high = text.split()
    return int(low), int(high)


def assert_explains_address_in_use(stderr: str, port: int) -> None:
    low, high = ephemeral_range()
    assert "already in use" in stderr
    assert f"127.0.0.1:{port}" in stderr
    assert f"{low}-{high}" in stderr  # why: the ephemeral range, as this machine has it
    assert f"net.ipv4.ip_local_reserved_ports={port}" in stderr  # how to reserve it
    assert "another port" in stderr


def test_address_in_use_says_why_and_what_to_do(occupied_port: int) -> None:
    result = run_main("--port", str(occupied_port))
    assert result.returncode == 2, result.stderr
    assert_explains_address_in_use(result.stderr, occupied_port)
    assert "Traceback" not in result.stderr


def test_runstateserver_explains_address_in_use_too(occupied_port: int) -> None:
    result = run_command(f"127.0.0.1:{occupied_port}")
    assert result.returncode != 0
    assert_explains_address_in_use(result.stderr, occupied_port)
    assert "Traceback" not in result.stderr


# The demo's state server: outside the ephemeral range, so its start never collides with a
# client socket (issue 13: three failed demo starts in a row on 42424).


def test_the_demo_state_port_is_below_the_ephemeral_range() -> None:
    script = (ROOT / "scripts" / "demo.sh").read_text()
    (default,) = re.findall(r"STATEMODES_DEMO_STATE_PORT:-(\d+)", script)
    assert int(default) < LINUX_EPHEMERAL[0]
    settings = (ROOT / "testproject" / "settings.py").read_text()
    assert f'"STATEMODES_DEMO_STATE_PORT", "{default}"' in settings
    documented = (ROOT / "docs" / "demo.md").read_text()
    assert f"| `STATEMODES_DEMO_STATE_PORT` | `{default}` |" in documented
