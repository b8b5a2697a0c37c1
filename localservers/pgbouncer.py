"""A private PgBouncer in transaction pooling, in front of a PostgreSQL on 127.0.0.1 (5432 unless told).

Debian's ``pgbouncer`` package by default (1.18 here: no protocol-level prepared statements), or
another binary such as ``BUILT`` (1.24.1, built by scripts/test.sh), started on a free loopback
port, as the ``postgres`` user when run as root (PgBouncer refuses to run as root), and stopped
by its pid.
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

PGBOUNCER = "/usr/sbin/pgbouncer"
# PgBouncer 1.21+ tracks prepared statements per client (max_prepared_statements); bookworm has
# 1.18, so scripts/test.sh builds this one from Debian's source into the same cache path.
BUILT_VERSION = "1.24.1"
BUILT = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
    "django-statemodes",
    f"pgbouncer-{BUILT_VERSION}",
    "bin",
    "pgbouncer",
)
CONFIG = """\
[databases]
* = host=127.0.0.1 port={upstream} user={user}

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
{extra}"""


def available(binary: str = PGBOUNCER) -> str | None:
    """Why this PgBouncer binary cannot be started here, or None."""
    if os.access(binary, os.X_OK):
        return None
    if binary == BUILT:
        return f"PgBouncer {BUILT_VERSION} is not built ({BUILT}; scripts/test.sh builds it)"
    if binary == PGBOUNCER:
        return f"PgBouncer is not installed ({PGBOUNCER}; Debian package pgbouncer)"
    return f"PgBouncer is not installed ({binary})"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def pgbouncer(
    pool_size: int = 10,
    *,
    upstream: int = 5432,
    user: str = "root",
    binary: str = PGBOUNCER,
    **settings: int,
) -> Iterator[int]:
    """Start PgBouncer (transaction pooling) on a free loopback port; yield the port; stop it.

    ``upstream`` is the PostgreSQL port it pools, ``binary`` the PgBouncer to run (Debian's by
    default, or ``BUILT``), ``settings`` more ``[pgbouncer]`` settings.
    """
    reason = available(binary)
    if reason is not None:
        raise RuntimeError(reason)
    base = tempfile.mkdtemp(prefix="statemodes-pgbouncer-")
    port = _free_port()
    config = os.path.join(base, "pgbouncer.ini")
    with open(config, "w") as file:
        extra = "".join(f"{name} = {value}\n" for name, value in settings.items())
        file.write(
            CONFIG.format(
                port=port, base=base, pool_size=pool_size, upstream=upstream, user=user, extra=extra
            )
        )
    command = [binary, "-q", config]
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
