"""A private PgBouncer in transaction pooling, in front of the PostgreSQL at 127.0.0.1:5432.

Debian's ``pgbouncer`` package (1.18 here: no protocol-level prepared statements), started on a
free loopback port by the tests that need it, as the ``postgres`` user when run as root
(PgBouncer refuses to run as root), and stopped by its pid.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import REQUIRE_SERVICES, free_port

PGBOUNCER = "/usr/sbin/pgbouncer"
CONFIG = """\
[databases]
* = host=127.0.0.1 port=5432 user=root

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
max_client_conn = 500
default_pool_size = {pool_size}
ignore_startup_parameters = extra_float_digits,options
logfile = {base}/pgbouncer.log
pidfile = {base}/pgbouncer.pid
"""


def need_pgbouncer() -> None:
    """Skip (or fail, when services are required) unless PgBouncer is installed."""
    if not os.path.exists(PGBOUNCER):
        message = f"PgBouncer is not installed ({PGBOUNCER}; Debian package pgbouncer)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def pgbouncer(pool_size: int = 10) -> Iterator[int]:
    """Start PgBouncer (transaction pooling) on a free loopback port; yield the port; stop it."""
    need_pgbouncer()
    base = tempfile.mkdtemp(prefix="statemodes-pgbouncer-")
    port = free_port()
    config = os.path.join(base, "pgbouncer.ini")
    with open(config, "w") as file:
        file.write(CONFIG.format(port=port, base=base, pool_size=pool_size))
    command = [PGBOUNCER, "-q", config]
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(config, "postgres")
        command[1:1] = ["-u", "postgres"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    _, err = process.communicate(timeout=5)
                    raise RuntimeError(f"PgBouncer did not start: {err.decode()}") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(base, ignore_errors=True)
