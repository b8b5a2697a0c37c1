"""SQL mode behind a real multi-process server (gunicorn): lost updates and a database restart."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import fixtures_sql
from tests.conftest import REQUIRE_SERVICES, free_port
from tests.fixtures_sql import PG, PG_ENABLED, database_name
from tests.server import get, gunicorn, hammer, session_cookie

ROOT = Path(__file__).resolve().parent.parent
sql_tables = fixtures_sql.sql_tables

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PG_ENABLED, reason="PostgreSQL is not reachable"),
    pytest.mark.django_db(databases=["default", PG]),
]


def app_env(name: str, **extra: str) -> dict[str, str]:
    return {
        "STATEMODES_SQLAPP_NAME": name,
        "DJANGO_SETTINGS_MODULE": "tests.sqlapp.settings",
        **extra,
    }


def test_atomic_requests_lose_no_update_across_processes_and_threads(
    sql_tables: list[str],
) -> None:
    env = app_env(database_name(PG), STATEMODES_SQLAPP_ATOMIC="1")
    with gunicorn("tests.sqlapp.wsgi", workers=2, threads=4, env=env) as port:
        status, _, body = get(port, "/pid/")
        assert status == 200 and json.loads(body)["in_atomic"] is True  # ATOMIC_REQUESTS is on
        expected, actual = hammer(port, clients=8, increments=50, work_ms=2)
    assert actual == expected == 401


# A private PostgreSQL cluster, so a restart disturbs nobody else's tests.

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


@contextmanager
def private_cluster() -> Iterator[tuple[int, Any, Any]]:
    """Yield (port, stop, start) for a throwaway cluster owned by the postgres user."""
    if not PG_BIN or shutil.which("runuser") is None or os.geteuid() != 0:
        message = "needs PostgreSQL's server binaries, runuser and root to start a private cluster"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    bin_dir = PG_BIN[-1]
    base = tempfile.mkdtemp(prefix="statemodes-pg-")
    data = os.path.join(base, "data")
    shutil.chown(base, "postgres")
    port = free_port()
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"

    def as_postgres(*command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def start() -> None:
        as_postgres(
            f"{bin_dir}/pg_ctl", "-D", data, "-o", options, "-w", "-l", f"{base}/log", "start"
        )

    def stop() -> None:
        as_postgres(f"{bin_dir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop")

    as_postgres(f"{bin_dir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    try:
        start()
        yield port, stop, start
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def test_a_database_restart_gives_503s_loses_nothing_and_recovers(sql_tables: list[str]) -> None:
    with private_cluster() as (pg_port, stop, start):
        env = app_env(
            "postgres",
            STATEMODES_SQLAPP_USER="postgres",
            STATEMODES_SQLAPP_PORT=str(pg_port),
            STATEMODES_SQLAPP_LOCK_TIMEOUT="3",
        )
        subprocess.run(
            [sys.executable, "-m", "django", "installsqlstate", "--type", "persisted"],
            cwd=ROOT, env={**os.environ, **env, "STATEMODES_DJANGO_TESTS": "0"},
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        with gunicorn("tests.sqlapp.wsgi", workers=2, threads=4, env=env) as port:
            pids_before = {json.loads(get(port, "/pid/")[2])["pid"] for _ in range(8)}
            status, headers, _ = get(port, "/increment/")
            assert status == 200
            key = session_cookie(headers)
            results: list[tuple[float, int, bytes]] = []
            stop_at = time.monotonic() + 30

            def client() -> None:
                while time.monotonic() < stop_at:
                    status, _, body = get(port, "/increment/?work=1", key)
                    results.append((time.monotonic(), status, body))
                    if status != 200:
                        time.sleep(0.05)

            threads = [threading.Thread(target=client) for _ in range(4)]
            for thread in threads:
                thread.start()
            try:
                time.sleep(1.0)
                down_at = time.monotonic()
                stop()
                time.sleep(1.0)
            finally:
                start()  # always: the cluster must come back whatever happened
            up_at = time.monotonic()
            # Run until some increments succeeded after the restart (a lock held across it
            # is broken after the 3 s lock timeout), then stop the clients.
            deadline = up_at + 20
            while time.monotonic() < deadline:
                if sum(1 for t, s, _ in results if t > up_at and s == 200) >= 20:
                    break
                time.sleep(0.2)
            stop_at = 0.0
            for thread in threads:
                thread.join(timeout=60)
            pids_after = {json.loads(get(port, "/pid/")[2])["pid"] for _ in range(8)}
            status, _, body = get(port, "/read/", key)
        assert status == 200
        final = json.loads(body)["counter"]

    statuses = [status for _, status, _ in results]
    unavailable = [body for _, status, body in results if status == 503]
    succeeded = statuses.count(200)
    assert unavailable, "no 503 while the database was down"
    assert all(
        b"STATEMODES_SQL_DATABASE" in body or b"session-state database" in body
        for body in unavailable
    )
    assert set(statuses) <= {200, 503, 400}, sorted(set(statuses))
    # Every acknowledged increment is in the session: nothing committed was lost, none lost by
    # a race. (A request whose lock was broken gets 400 SessionInterrupted and saves nothing.)
    assert final == 1 + succeeded
    assert sum(1 for t, s, _ in results if t > up_at and s == 200) >= 20
    assert any(t > down_at for t, s, _ in results if s == 503)
    assert pids_after <= pids_before | pids_after and pids_after & pids_before  # same workers
