"""A real state server subprocess for tests: started on a free port, killed and restarted.

Registered as a plugin by tests/conftest.py: the module-scoped ``stateserver`` fixture is visible
to every test module; import ``StateServerProcess`` and the helpers from here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from django_statemodes.stateserver.addresses import Address
from django_statemodes.stateserver.client import StateServerClient
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def wait_for_port(port: int, *, up: bool = True, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                # A listening state server greets first: wait for the WELCOME bytes.
                sock.settimeout(0.5)
                if sock.recv(1) and up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not come {'up' if up else 'down'} in {timeout} s")


class StateServerProcess:
    """``python -m django_statemodes.stateserver`` on 127.0.0.1:<free port>."""

    def __init__(self, *args: str, port: int | None = None, env: dict[str, str] | None = None):
        self.args = list(args)
        self.port = port or free_port()
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"stateserver-{self.port}.log"

    @property
    def connection(self) -> str:
        return f"tcpip=127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> StateServerProcess:
        env = dict(os.environ, **(self.env or {}))
        extra = (self.env or {}).get("PYTHONPATH")
        env["PYTHONPATH"] = f"{extra}{os.pathsep}{ROOT}" if extra else str(ROOT)
        command = [sys.executable, "-m", "django_statemodes.stateserver", "--port", str(self.port)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                command + self.args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"state server did not start: {self.log.read_text()[-2000:]}"
            ) from None
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no snapshot, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM and wait: a graceful shutdown (snapshot written)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def restart(self) -> StateServerProcess:
        self.stop()
        return self.start()

    def __enter__(self) -> StateServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@pytest.fixture(scope="module")
def stateserver() -> Iterator[StateServerProcess]:
    """A state server shared by one test module."""
    with StateServerProcess() as server:
        yield server


def client_for(server: StateServerProcess, **options: Any) -> StateServerClient:
    """A blocking client of ``server`` (5 s timeout unless given), as the engine builds one."""
    options.setdefault("timeout", 5)
    return StateServerClient(Address("127.0.0.1", server.port), **options)
