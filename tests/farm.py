"""Gunicorn subprocesses serving tests/farmapp, and a tiny cookie-keeping HTTP client."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gunicorn

from tests.conftest import free_port
from tests.fixtures_stateserver import ROOT

COOKIE = "sessionid"
# gunicorn 27 opens one control socket per user by default; parallel test servers would share it.
_NO_CONTROL_SOCKET = (
    ["--no-control-socket"] if int(gunicorn.__version__.split(".")[0]) >= 27 else []
)


class WebServer:
    """``python -m gunicorn tests.farmapp.wsgi`` on a free port."""

    def __init__(self, state_connection: str, *, workers: int = 1, threads: int = 1, **env: str):
        self.port = free_port()
        self.args = ["--workers", str(workers), "--threads", str(threads)]
        self.env = {"FARM_STATE_CONNECTION": state_connection, **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"farm-{self.port}.log"

    def start(self) -> WebServer:
        env = dict(os.environ, PYTHONPATH=str(ROOT), **self.env)
        env.pop("DJANGO_SETTINGS_MODULE", None)
        command = [
            sys.executable, "-m", "gunicorn", "tests.farmapp.wsgi:application",
            "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "2", "--timeout", "120",
            *self.args, *_NO_CONTROL_SOCKET,
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                status, _ = Browser(self.port).get("/count")
                if status == 200:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL the master; its workers notice and exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        # Orphaned workers exit once they see their master gone; wait until none answers.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the workers of port {self.port} outlived their master")

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Browser:
    """One user: keeps the session cookie across requests (and across web servers)."""

    def __init__(self, port: int, cookie: str | None = None, timeout: float = 30) -> None:
        self.port = port
        self.cookie = cookie
        self.timeout = timeout
        #: The last response's headers.
        self.headers: dict[str, str] = {}

    def get(self, path: str, port: int | None = None) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=self.timeout)
        try:
            headers = {"Cookie": f"{COOKIE}={self.cookie}"} if self.cookie else {}
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read().decode()
            self.headers = dict(response.headers.items())
            for header in response.headers.get_all("Set-Cookie") or []:
                name, _, rest = header.partition("=")
                if name == COOKIE:
                    self.cookie = rest.split(";", 1)[0] or None
            return response.status, body
        finally:
            conn.close()

    def counter(self, path: str = "/incr", port: int | None = None) -> int:
        status, body = self.get(path, port)
        assert status == 200, (status, body)
        return int(body.split()[0])
