"""A user's project under Django's test runner and pytest-django, in every mode (issue 12, 6).

``tests/runnerproject`` is a small project of its own (settings chosen by environment
variables, no state table installed by hand); each test runs its suite in a subprocess, exactly
as a user types it, and checks the exit status and what is left behind.
"""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import unittest
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from django.core import mail
from django.db.backends.sqlite3.base import DatabaseWrapper

from django_statemodes.test import is_test_database
from tests.fixtures_stateserver import StateServerProcess

RUNNER = Path(__file__).resolve().parent / "runnerproject"
MANAGE_TEST = ["manage.py", "test", "--noinput"]
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]


def run(mode: str, command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python <command>`` in the runner project with ``mode``'s settings."""
    environment = {
        key: value
        for key, value in os.environ.items()
        # This suite's own settings and pytest options must not leak into the user's run.
        if key not in ("DJANGO_SETTINGS_MODULE", "PYTEST_ADDOPTS")
    }
    environment.update(STATEMODES_RUNNER_MODE=mode, **env)
    return subprocess.run(
        [sys.executable, *command],
        cwd=RUNNER,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def passed(result: subprocess.CompletedProcess[str]) -> bool:
    """Return True if the run exited 0; print its output for the failure report otherwise."""
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:], sep="\n")
    return result.returncode == 0


def pg_databases(prefix: str) -> list[str]:
    with psycopg.connect(host="127.0.0.1", dbname="test", user="root", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", [prefix + "%"]
        ).fetchall()
    return [row[0] for row in rows]


@pytest.fixture
def pg_test_name(postgres: None) -> Iterator[str]:
    """A test database name of this run only; dropped afterwards if a run left it behind."""
    name = f"test_runner_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(host="127.0.0.1", dbname="test", user="root", autocommit=True) as conn:
        for left in pg_databases(name):
            conn.execute(f'DROP DATABASE IF EXISTS "{left}" WITH (FORCE)')


@pytest.fixture
def sqlite_file(tmp_path: Path) -> str:
    return str(tmp_path / "runner.sqlite3")


@pytest.mark.parametrize(
    ("name", "test_name", "expected"),
    [
        ("test_shop", None, True),  # TEST_DATABASE_PREFIX + NAME
        ("shop_tests", "shop_tests", True),  # TEST["NAME"]
        ("file:memorydb_default?mode=memory&cache=shared", None, True),
        ("file:memorydb_default_2?mode=memory&cache=shared", None, True),  # --parallel
        ("shop", None, False),
        ("test", None, False),
        (":memory:", None, False),
    ],
)
def test_what_counts_as_a_test_database(name: str, test_name: str | None, expected: bool) -> None:
    wrapper = DatabaseWrapper({"NAME": name, "TEST": {"NAME": test_name}}, alias="shop")
    assert is_test_database(wrapper) is expected


def test_nothing_is_a_test_database_outside_a_test_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(mail, "outbox")  # as after teardown_test_environment()
    wrapper = DatabaseWrapper({"NAME": "test_shop", "TEST": {"NAME": None}}, alias="shop")
    assert is_test_database(wrapper) is False


# SQL mode: the test database gets the tables, the runner drops it, no connection is left.


def unittest_counts_skipped_tests() -> bool:
    class Skipping(unittest.TestCase):
        @unittest.skip("counted or not")
        def test_skipped(self) -> None:
            pass

    suite = unittest.defaultTestLoader.loadTestsFromTestCase(Skipping)
    return unittest.TextTestRunner(stream=io.StringIO()).run(suite).testsRun == 1


@pytest.mark.slow
def test_manage_py_test_on_postgresql_drops_the_test_database(pg_test_name: str) -> None:
    result = run("postgresql", MANAGE_TEST, STATEMODES_RUNNER_PG_TEST_NAME=pg_test_name)
    assert passed(result)
    # RollbackTests are SQLite's: on PostgreSQL sessions are committed by the providers' own
    # connections, outside the test's transaction.
    # Whether "Ran N tests" counts the skipped ones depends on the interpreter's unittest
    # (3.12.1 leaves them out; 3.11 and 3.13 count them): ask it, as the runner will.
    ran = 8 if unittest_counts_skipped_tests() else 6
    assert f"Ran {ran} tests" in result.stderr and "OK (skipped=2)" in result.stderr
    assert pg_databases(pg_test_name) == []


@pytest.mark.slow
def test_pytest_django_on_postgresql_drops_the_test_database(pg_test_name: str) -> None:
    result = run("postgresql", PYTEST, STATEMODES_RUNNER_PG_TEST_NAME=pg_test_name)
    assert passed(result)
    assert "6 passed, 2 skipped" in result.stdout
    assert pg_databases(pg_test_name) == []


@pytest.mark.slow
def test_parallel_workers_clone_and_drop_the_test_database(pg_test_name: str) -> None:
    # CREATE DATABASE ... TEMPLATE needs the template free of connections, as DROP does.
    command = [*MANAGE_TEST, "--parallel", "2"]
    result = run("postgresql", command, STATEMODES_RUNNER_PG_TEST_NAME=pg_test_name)
    assert passed(result)
    assert "Cloning test database" in result.stderr
    assert pg_databases(pg_test_name) == []  # the clones (<name>_1, <name>_2) too


@pytest.mark.slow
def test_manage_py_test_on_sqlite_uses_the_in_memory_test_database(sqlite_file: str) -> None:
    # The runner replaces the file with its in-memory database (E031 allows that one only).
    # TestCases write users, then sessions, in one transaction that rolls back after each test.
    result = run("sqlite", [*MANAGE_TEST, "-v", "2"], STATEMODES_RUNNER_SQLITE=sqlite_file)
    assert passed(result)
    assert "file:memorydb_default?mode=memory&cache=shared" in result.stderr
    assert "Ran 8 tests" in result.stderr and "skipped" not in result.stderr
    assert "test_2_the_next_test_does_not_see_it" in result.stderr  # RollbackTests ran
    assert not Path(sqlite_file).exists()  # the project's own database was never touched


@pytest.mark.slow
def test_parallel_workers_on_sqlite(sqlite_file: str) -> None:
    # Each worker tests on its clone (file:memorydb_default_<n>...), its sessions with it.
    command = [*MANAGE_TEST, "--parallel", "2"]
    result = run("sqlite", command, STATEMODES_RUNNER_SQLITE=sqlite_file)
    assert passed(result)
    assert "Cloning test database" in result.stderr
    assert "Ran 8 tests" in result.stderr and "skipped" not in result.stderr


@pytest.mark.slow
def test_pytest_django_on_sqlite(sqlite_file: str) -> None:
    result = run("sqlite", PYTEST, STATEMODES_RUNNER_SQLITE=sqlite_file)
    assert passed(result)
    assert "8 passed" in result.stdout
    assert not Path(sqlite_file).exists()


@pytest.mark.slow
def test_production_migrate_installs_no_state_table(sqlite_file: str) -> None:
    # installsqlstate stays a deliberate step (like createcachetable): only test databases
    # get the tables by themselves.
    result = run(
        "sqlite", ["manage.py", "migrate", "-v", "0"], STATEMODES_RUNNER_SQLITE=sqlite_file
    )
    assert passed(result)
    with sqlite3.connect(sqlite_file) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "auth_user" in tables
    assert not {name for name in tables if name.startswith("ASPState")}


# The other modes: nothing database-related, and clear_sessions() empties each store.


@pytest.mark.slow
def test_manage_py_test_in_inproc_mode() -> None:
    assert passed(run("inproc", MANAGE_TEST))


@pytest.mark.slow
def test_manage_py_test_with_the_redis_provider(redis_server: None) -> None:
    application = f"runner-{uuid.uuid4().hex[:12]}"
    client = redis.Redis(host="127.0.0.1", port=6379, db=15)
    other = "statemodes:another-application:s:{somebody}"
    client.set(other, b"kept", ex=120)
    try:
        assert passed(run("redis", MANAGE_TEST, STATEMODES_RUNNER_APPLICATION=application))
        # clear_sessions() deleted only this application's keys.
        assert client.get(other) == b"kept"
        assert list(client.scan_iter(match=f"statemodes:{application}:*")) == []
    finally:
        client.delete(other)
        client.close()


@pytest.mark.slow
def test_manage_py_test_with_a_state_server() -> None:
    with StateServerProcess() as server:
        result = run("stateserver", MANAGE_TEST, STATEMODES_STATE_CONNECTION=server.connection)
        assert passed(result)
