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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REQUIRE_SERVICES, free_port
from tests.fixtures_sql import PG, PG_ENABLED, database_name
from tests.server import get, gunicorn, hammer, session_cookie

PID = "x-worker-pid"  # tests/redisapp/middleware.py's header, listed in tests/sqlapp/settings.py

ROOT = Path(__file__).resolve().parent.parent

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
        served: set[str] = set()
        expected, actual = hammer(port, clients=8, increments=50, work_ms=2, served=served)
    assert actual == expected == 401
    assert len(served) == 2, served  # both workers took increments: the race was across processes


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


def worker_pids(port: int, timeout: float = 20) -> set[str]:
    """Sample both workers' pids: rounds of concurrent requests until two pids have answered.

    Sampling stops at two: if a worker had been replaced, the set holds a pid not seen before.
    """
    pids: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(pids) < 2 and time.monotonic() < deadline:
        with ThreadPoolExecutor(8) as pool:
            for status, headers, body in pool.map(lambda _: get(port, "/pid/"), range(16)):
                assert status == 200, body
                assert headers[PID] == str(json.loads(body)["pid"])
                pids.add(headers[PID])
    assert len(pids) == 2, f"only {pids} answered in {timeout} s"
    return pids


def install_on(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "django", "installsqlstate", "--type", "persisted"],
        cwd=ROOT, env={**os.environ, **env, "STATEMODES_DJANGO_TESTS": "0"},
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


@contextmanager
def site_on_private_cluster(**extra: str) -> Iterator[tuple[int, Callable[[], None], Any]]:
    """Yield (site port, stop, start): the SQL-mode site, its sessions on a private cluster."""
    with private_cluster() as (pg_port, stop, start):
        env = app_env(
            "postgres",
            STATEMODES_SQLAPP_USER="postgres",
            STATEMODES_SQLAPP_PORT=str(pg_port),
            **extra,
        )
        install_on(env)
        with gunicorn("tests.sqlapp.wsgi", workers=2, threads=4, env=env) as port:
            yield port, stop, start


def assert_clear_503(headers: dict[str, str], body: bytes) -> None:
    assert headers.get("retry-after", "").isdigit() and int(headers["retry-after"]) > 0, headers
    # The store is down, or (4 clients on one session, 4 threads a worker) the session's
    # waiters already hold their share of a worker's threads (STATEMODES_LOCK_WAITING_THREADS).
    assert b"Session state is unavailable" in body or b"Too many requests" in body, body
    # DEBUG is off: which store is down, and where, goes to the log, not to visitors.
    assert b"SQL session-state database" not in body, body


# One request: (started, finished, status, headers, body).
Result = tuple[float, float, int, dict[str, str], bytes]


def test_a_database_restart_gives_503s_loses_nothing_and_recovers(sql_tables: list[str]) -> None:
    with site_on_private_cluster(STATEMODES_SQLAPP_LOCK_TIMEOUT="3") as (port, stop, start):
        restart_under_load(port, stop, start)


# A database that has just started may still refuse or time out a few connections (MariaDB
# while InnoDB recovers): requests count as recovered from this long after the first success.
SETTLE = 2.0


def settled(results: list[Result], up_at: float) -> list[Result]:
    """The requests started once the database settled: SETTLE after the first success."""
    successes = [r[1] for r in results if r[0] > up_at and r[2] == 200]
    if not successes:
        return []
    return [r for r in results if r[0] >= min(successes) + SETTLE]


def settled_successes(results: list[Result], up_at: float) -> list[Result]:
    return [r for r in settled(list(results), up_at) if r[2] == 200]


def restart_under_load(port: int, stop: Callable[[], None], start: Callable[[], None]) -> None:
    """Stop and start the site's session database under 4 clients: 503s, nothing lost."""
    pids_before = worker_pids(port)
    status, headers, _ = get(port, "/increment/")
    assert status == 200
    key = session_cookie(headers)
    results: list[Result] = []
    stop_at = time.monotonic() + 30

    def client() -> None:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            status, headers, body = get(port, "/increment/?work=1", key)
            results.append((started, time.monotonic(), status, headers, body))
            if status != 200:
                time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        down_at = time.monotonic()
        stop()
        stopped_at = time.monotonic()
        time.sleep(1.0)
    finally:
        start()  # always: the cluster must come back whatever happened
    up_at = time.monotonic()
    # Run until 20 increments succeeded once the database settled after the restart (a lock
    # held across it is broken after the 3 s lock timeout), then stop the clients.
    deadline = up_at + 40
    while time.monotonic() < deadline:
        if len(settled_successes(results, up_at)) >= 20:
            break
        time.sleep(0.2)
    stop_at = 0.0
    for thread in threads:
        thread.join(timeout=60)
    pids_after = worker_pids(port)
    status, _, body = get(port, "/read/", key)
    assert status == 200
    final = json.loads(body)["counter"]

    statuses = [r[2] for r in results]
    unavailable = [r for r in results if r[2] == 503]
    succeeded = statuses.count(200)
    assert unavailable, "no 503 while the database was down"
    for _, _, _, headers, body in unavailable:
        assert_clear_503(headers, body)
    assert any(r[1] > down_at for r in unavailable)
    assert set(statuses) <= {200, 503, 400}, sorted(set(statuses))
    # Every acknowledged increment is in the session: nothing committed was lost, none lost by
    # a race. (A request whose lock was broken gets 400 SessionInterrupted and saves nothing.)
    # A save in flight when the database stopped may have committed with its reply lost: it is
    # answered 503 (or 400 when tried again) though applied, as with any database. Only
    # requests started before the database had stopped can be such.
    in_flight_failures = sum(1 for r in results if r[2] != 200 and r[0] < stopped_at)
    assert 1 + succeeded <= final <= 1 + succeeded + in_flight_failures, (final, succeeded)
    # Recovered: once the database has settled after its restart, requests succeed again, and
    # nothing fails but with a 503 to try again (Retry-After): the session's waiters past their
    # share of the threads, or, on MariaDB, a transaction InnoDB rolled back to break a
    # deadlock between two clients of the session.
    later = settled(results, up_at)
    failed_later = [
        (r[2], r[4][-300:])
        for r in later
        if r[2] != 200 and not (r[2] == 503 and "retry-after" in r[3])
    ]
    assert sum(r[2] == 200 for r in later) >= 10 and not failed_later, failed_later
    # The same two workers throughout, none restarted: the 503s came from them too.
    assert pids_after == pids_before
    assert {r[3][PID] for r in results} <= pids_before


def test_a_retry_interval_makes_a_request_wait_for_the_database(sql_tables: list[str]) -> None:
    # A retry interval far beyond the test's patience: only a retry that finds the database
    # back (ASP.NET retries every 0.5 s) answers in time; the interval's end would be a 503.
    with site_on_private_cluster(STATEMODES_SQLAPP_RETRY="600") as (port, stop, start):
        status, headers, _ = get(port, "/increment/")
        assert status == 200
        key = session_cookie(headers)
        answers: list[tuple[float, int, dict[str, str], bytes]] = []

        def request() -> None:
            status, headers, body = get(port, "/increment/", key)
            answers.append((time.monotonic(), status, headers, body))

        stop()
        waiter = threading.Thread(target=request)
        try:
            waiter.start()
            time.sleep(2.0)
            assert waiter.is_alive() and not answers  # waiting, not a 503
        finally:
            restarting = time.monotonic()
            start()
        waiter.join(timeout=60)
        status, _, body = get(port, "/read/", key)
    assert answers, "the request never returned"
    answered_at, status_, _, body_ = answers[0]
    assert status_ == 200, body_
    assert json.loads(body_) == {"counter": 2}
    assert answered_at > restarting  # answered once the database was coming back
    assert status == 200 and json.loads(body) == {"counter": 2}


def test_without_a_retry_interval_a_request_fails_at_once(sql_tables: list[str]) -> None:
    with site_on_private_cluster(STATEMODES_SQLAPP_RETRY="0") as (port, stop, start):
        status, headers, _ = get(port, "/increment/")
        assert status == 200
        key = session_cookie(headers)
        stop()
        try:
            # Answered while the database is still down (it starts again only after the
            # answer): the request did not wait for it.
            status, headers, body = get(port, "/increment/", key)
        finally:
            start()
        assert status == 503
        assert_clear_503(headers, body)
        status, _, body = get(port, "/increment/", key)
    assert status == 200 and json.loads(body) == {"counter": 2}  # the failed one saved nothing
