"""Private redis-server processes on free loopback ports, for tests that kill and restart Redis
(the shared Redis at 6379 is never touched)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from tests.conftest import REQUIRE_SERVICES, free_port


class RedisServer:
    """One redis-server process without persistence; ``kill()`` and ``start()`` again."""

    def __init__(self, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        # Its working directory: a replica writes the primary's RDB there even with --save "",
        # and it must not land in the checkout (``running`` removes it).
        self.dir = tempfile.mkdtemp(prefix="statemodes-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self.dir, *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def need_redis_binary() -> None:
    """Skip (or fail, when services are required) unless redis-server is installed."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (STATEMODES_REQUIRE_SERVICES=1)")
        pytest.skip(message)


@contextmanager
def running(*servers: RedisServer) -> Iterator[tuple[RedisServer, ...]]:
    """Start the servers in order; kill them all and remove their files afterwards."""
    need_redis_binary()
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.kill()
            shutil.rmtree(server.dir, ignore_errors=True)
