"""Run a real gunicorn server and hammer one session from many clients (lost-update tests)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def gunicorn(
    app: str, *, workers: int, threads: int, env: dict[str, str] | None = None
) -> Iterator[int]:
    """Start ``gunicorn app`` on a free loopback port; yield the port; stop it."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        app,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--worker-class",
        "gthread",
        "--timeout",
        "120",
        "--log-level",
        "warning",
    ]
    full_env = {
        **os.environ,
        "STATEMODES_DJANGO_TESTS": "0",
        "DJANGO_SETTINGS_MODULE": "tests.serverapp.settings",
        **(env or {}),
    }
    process = subprocess.Popen(command, cwd=ROOT, env=full_env)
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/read/")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not answer within {timeout} s")


def get(port: int, path: str, cookie: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Cookie": f"sessionid={cookie}"} if cookie else {}
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def session_cookie(headers: dict[str, str]) -> str:
    cookie = headers["set-cookie"]
    return cookie.split("sessionid=", 1)[1].split(";", 1)[0]


def hammer(
    port: int,
    *,
    clients: int = 8,
    increments: int = 50,
    work_ms: int = 2,
    served: set[str] | None = None,
    served_header: str = "x-worker-pid",
) -> tuple[int, int]:
    """Create a session (counter 1), then send clients x increments concurrently.

    Returns (expected, actual) final counter values. ``served`` collects the values of
    ``served_header`` (which worker answered) where the app under test sets it.
    """
    status, headers, body = get(port, "/increment/")
    assert status == 200, body
    key = session_cookie(headers)
    increment_concurrently(
        port,
        "/increment/",
        key,
        clients=clients,
        increments=increments,
        work_ms=work_ms,
        served=served,
        served_header=served_header,
    )
    _, _, body = get(port, "/read/", key)
    return 1 + clients * increments, json.loads(body)["counter"]


def increment_concurrently(
    port: int,
    path: str,
    key: str,
    *,
    clients: int,
    increments: int,
    work_ms: int = 2,
    served: set[str] | None = None,
    served_header: str = "x-worker-pid",
) -> int:
    """Send ``clients`` x ``increments`` requests to ``path`` for session ``key``, concurrently.

    A 503 with Retry-After (a session's waiters past their share of the process's threads, a
    pool that stayed busy) is backpressure, not a lost update: the view did not run, so the
    client sends the increment again, as a browser or a proxy honouring Retry-After does; 20
    tries at most. Returns how many such answers were retried; any other failure fails.
    """
    failures: list[str] = []
    refused = [0]

    def client() -> None:
        for _ in range(increments):
            for _attempt in range(20):
                try:
                    status, headers, body = get(port, f"{path}?work={work_ms}", key)
                except OSError as exc:  # a timeout: the server froze or lost the request
                    failures.append(repr(exc))
                    return
                if served is not None and served_header in headers:
                    served.add(headers[served_header])
                if status == 503 and "retry-after" in headers:
                    refused[0] += 1
                    time.sleep(0.05)
                    continue
                break
            if status != 200:
                failures.append(f"{status}: {body[:300]!r}")
                return

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures, failures[:3]
    return refused[0]
