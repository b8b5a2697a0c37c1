"""Start and stop the real servers a benchmark needs, on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def running(
    command: Sequence[str], port: int, *, env: dict[str, str] | None = None, timeout: float = 30
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` until it accepts connections on ``port``; stop it (SIGTERM) on exit."""
    process = subprocess.Popen(list(command), cwd=ROOT, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + timeout
        while not port_open(port):
            if process.poll() is not None:
                raise RuntimeError(f"{command[:4]} exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[:4]} did not listen on {port} within {timeout} s")
            time.sleep(0.05)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@contextmanager
def gunicorn(
    engine: str, *, workers: int, threads: int = 1, env: dict[str, str] | None = None
) -> Iterator[int]:
    """Serve ``benchmarks.app`` with ``engine`` on a free port; yield the port."""
    port = free_port()
    command = python_module(
        "gunicorn",
        "benchmarks.app.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread" if threads > 1 else "sync",
        "--threads",
        str(threads),
        "--timeout",
        "120",
        "--log-level",
        "warning",
    )
    settings_env = {
        "DJANGO_SETTINGS_MODULE": "benchmarks.app.settings",
        "STATEMODES_BENCH_ENGINE": engine,
        **(env or {}),
    }
    with running(command, port, env=settings_env):
        yield port
