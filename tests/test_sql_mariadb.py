"""SQL mode on MariaDB (or MySQL): what only that dialect has to prove.

The contract, Django's session tests, the purge, the commands and the admin run on MariaDB with
the other dialects (tests parametrized over ``ALIASES``); here: its table options, hostile keys
against its multi-statements, 8 x 50 increments through gunicorn with ``ATOMIC_REQUESTS``, and
a restart under load (of a private server: the shared one at 3306 is never stopped).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections

from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.providers.sql import ddl, schema
from django_statemodes.testing import new_key
from tests.conftest import REQUIRE_SERVICES, free_port
from tests.fixtures_sql import MARIADB, MARIADB_ENABLED, MakeProvider, database_name
from tests.server import get, gunicorn, hammer
from tests.test_sql_server import install_on, restart_under_load

pytestmark = [
    pytest.mark.skipif(not MARIADB_ENABLED, reason="MariaDB is not reachable"),
    pytest.mark.django_db(databases=["default", MARIADB], transaction=True),
]


def table_facts(table: str) -> tuple[str, str]:
    """Return (storage engine, SessionId's collation or '') of an installed table."""
    with connections[MARIADB].cursor() as cursor:
        cursor.execute(
            "SELECT engine FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = %s",
            [table],
        )
        engine = cursor.fetchone()[0]
        cursor.execute(
            "SELECT collation_name FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name = %s AND column_name = 'SessionId'",
            [table],
        )
        row = cursor.fetchone()
    return engine, (row[0] if row else "")


def test_temp_tables_are_innodb_and_say_so(sql_tables: list[str]) -> None:
    call_command("uninstallsqlstate", database=MARIADB, interactive=False, verbosity=0)
    try:
        out = io.StringIO()
        call_command("installsqlstate", database=MARIADB, type="temp", stdout=out)
        assert "MariaDB has no unlogged tables" in out.getvalue()
        assert ddl.existing_tables(connections[MARIADB]) == set(schema.TABLES)
        # InnoDB (row locks, crash-safe), never MEMORY (no BLOBs, a lock per table).
        assert table_facts(schema.SESSIONS) == ("InnoDB", "ascii_bin")
        assert table_facts(schema.APPLICATIONS)[0] == "InnoDB"
    finally:
        call_command("uninstallsqlstate", database=MARIADB, interactive=False, verbosity=0)
        call_command("installsqlstate", database=MARIADB, type="persisted", verbosity=0)
    assert ddl.existing_tables(connections[MARIADB]) == set(schema.TABLES)


HOSTILE = [
    "x'; DROP TABLE ASPStateTempSessions; --",
    'x"; DELETE FROM ASPStateTempSessions; #',
    "x\\'; SELECT SLEEP(5); -- ",
    "x\x00y",
]


@pytest.mark.parametrize("key", HOSTILE)
def test_hostile_keys_stay_values_in_multi_statements(
    key: str, make_provider: MakeProvider
) -> None:
    provider = make_provider(MARIADB)
    mine = new_key()
    assert provider.set_and_release(mine, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    assert provider.get(key) is None
    assert provider.get_exclusive(key) is None
    assert provider.create_uninitialized(key, 60)  # stored under exactly that key
    held = provider.get_exclusive(key)
    assert held is not None and not held.locked and held.initialize
    assert provider.remove(key, held.lock_id)
    assert ddl.existing_tables(connections[MARIADB]) == set(schema.TABLES)
    item = provider.get(mine)
    assert item is not None and item.data == b"\x00{}"  # nothing else was touched
    provider.remove(mine)


def test_session_ids_compare_byte_for_byte(make_provider: MakeProvider) -> None:
    # MySQL's default collations ignore case: "ABC" would find "abc"'s session.
    provider = make_provider(MARIADB)
    key = new_key()
    assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    assert provider.get(key.upper()) is None
    provider.remove(key)


# The statements that reach one session's row, by name, with parameters for EXPLAIN.
KEYED = ("get", "get_exclusive", "update_release", "update_keep", "update_any", "release",
         "remove", "remove_any", "holds", "peek", "insert")  # fmt: skip


def plans(provider: Any, name: str, key: str) -> list[tuple[str, str]]:
    """(statement, index used) for each SELECT/UPDATE/DELETE of the named statement."""
    found: list[tuple[str, str]] = []
    conn = provider.connect()
    try:
        cursor = conn.cursor()
        for part in getattr(provider.sql, name).split("; "):
            verb = part.split(" ", 1)[0]
            if verb in {"START", "COMMIT", "INSERT"}:
                continue
            values = tuple(key if i == 0 else 1 for i in range(part.count("%s")))
            if verb == "SET":
                cursor.execute(part, values)
                continue
            cursor.execute(f"EXPLAIN {part}", values)
            rows = cursor.fetchall()
            columns = [column[0] for column in cursor.description]
            for row in rows:
                plan = dict(zip(columns, row, strict=True))
                # No table: the row was read as a constant, by the primary key.
                found.append((part, "PRIMARY" if plan["table"] is None else str(plan["key"])))
    finally:
        conn.close()
    return found


def test_every_statement_on_a_session_goes_through_the_primary_key(
    make_provider: MakeProvider,
) -> None:
    # On a table of one row MariaDB's optimizer chose Index_Expires for "SessionId = %s AND
    # Expires > now": a save then locked the index entry before the row while a lock
    # statement held the row and waited for the entry, and InnoDB broke the deadlock; and
    # READ COMMITTED's semi-consistent read let such a scan skip a row being locked (a save
    # that found no row with its own lock cookie). Held: every plan names PRIMARY.
    provider = make_provider(MARIADB)
    key = new_key()
    assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    try:
        seen = {name: plans(provider, name, provider.sid(key)) for name in KEYED}
    finally:
        provider.remove(key)
    assert all(seen.values()), [name for name, found in seen.items() if not found]
    wrong = {name: found for name, found in seen.items() if any(i != "PRIMARY" for _, i in found)}
    assert not wrong, wrong


def deadlocks() -> int:
    """InnoDB's count of deadlocks it broke since the server started."""
    with connections[MARIADB].cursor() as cursor:
        cursor.execute("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")
        return int(cursor.fetchone()[1])


@pytest.mark.slow
def test_atomic_requests_lose_no_update_across_processes_and_threads(
    sql_tables: list[str],
) -> None:
    env: dict[str, Any] = {
        "STATEMODES_SQLAPP_NAME": database_name(MARIADB),
        "STATEMODES_SQLAPP_ENGINE": "mysql",
        "STATEMODES_SQLAPP_ATOMIC": "1",
        "DJANGO_SETTINGS_MODULE": "tests.sqlapp.settings",
    }
    with gunicorn("tests.sqlapp.wsgi", workers=2, threads=4, env=env) as port:
        status, _, body = get(port, "/pid/")
        assert status == 200 and json.loads(body)["in_atomic"] is True  # ATOMIC_REQUESTS is on
        served: set[str] = set()
        before = deadlocks()
        expected, actual = hammer(port, clients=8, increments=50, work_ms=2, served=served)
        broken = deadlocks() - before
    assert actual == expected == 401
    assert len(served) == 2, served  # both workers took increments: the race was across processes
    # One row lock per statement, always the same one: nothing for InnoDB to break (before
    # the statements named the primary key, most runs counted deadlocks here).
    assert broken == 0, broken


@contextmanager
def private_mariadb() -> Iterator[tuple[int, Callable[[], None], Callable[[], None]]]:
    """Yield (port, stop, start) for a throwaway MariaDB server owned by the mysql user."""
    binaries = [shutil.which(name) for name in ("mariadb-install-db", "mariadbd")]
    if None in binaries or os.geteuid() != 0:
        message = "needs MariaDB's server binaries and root to start a private server"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    install_db, mariadbd = binaries
    assert install_db is not None and mariadbd is not None
    base = tempfile.mkdtemp(prefix="statemodes-mariadb-")
    shutil.chown(base, "mysql")
    data = os.path.join(base, "data")
    port = free_port()
    subprocess.run(
        [install_db, "--no-defaults", f"--datadir={data}", "--user=mysql",
         "--auth-root-authentication-method=normal", "--skip-test-db"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    process: subprocess.Popen[bytes] | None = None

    def start() -> None:
        nonlocal process
        process = subprocess.Popen(
            [mariadbd, "--no-defaults", f"--datadir={data}", "--user=mysql", f"--port={port}",
             "--bind-address=127.0.0.1", f"--socket={base}/sock", "--skip-log-bin"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                assert process.poll() is None, "the private MariaDB exited"
                assert time.monotonic() < deadline, "the private MariaDB did not start"
                time.sleep(0.05)

    def stop() -> None:
        if process is not None:
            process.terminate()  # a clean shutdown, as mariadb-admin shutdown
            process.wait(timeout=60)

    try:
        start()
        subprocess.run(
            ["mariadb", "-h127.0.0.1", f"-P{port}", "-uroot", "-e", "CREATE DATABASE test"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        yield port, stop, start
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_a_database_restart_gives_503s_loses_nothing_and_recovers(sql_tables: list[str]) -> None:
    with private_mariadb() as (db_port, stop, start):
        env = {
            "STATEMODES_SQLAPP_NAME": "test",
            "STATEMODES_SQLAPP_ENGINE": "mysql",
            "STATEMODES_SQLAPP_PORT": str(db_port),
            "STATEMODES_SQLAPP_LOCK_TIMEOUT": "3",
            "DJANGO_SETTINGS_MODULE": "tests.sqlapp.settings",
        }
        install_on(env)
        with gunicorn("tests.sqlapp.wsgi", workers=2, threads=4, env=env) as port:
            restart_under_load(port, stop, start)


def deadlock_error(provider: Any) -> Exception:
    """A real InnoDB deadlock between two of the provider's connections, as it is raised."""
    first, second = provider.connect(), provider.connect()
    try:
        setup = first.cursor()
        setup.execute("DROP TABLE IF EXISTS statemodes_deadlock")
        setup.execute("CREATE TABLE statemodes_deadlock (id INT PRIMARY KEY) ENGINE=InnoDB")
        setup.execute("INSERT INTO statemodes_deadlock VALUES (1), (2)")
        one, two = first.cursor(), second.cursor()
        one.execute("START TRANSACTION")
        two.execute("START TRANSACTION")
        one.execute("SELECT * FROM statemodes_deadlock WHERE id = 1 FOR UPDATE")
        two.execute("SELECT * FROM statemodes_deadlock WHERE id = 2 FOR UPDATE")
        errors: list[Exception] = []

        def lock(cursor: Any, row: int) -> None:
            try:
                cursor.execute(f"SELECT * FROM statemodes_deadlock WHERE id = {row} FOR UPDATE")
            except Exception as exc:
                errors.append(exc)

        waiter = threading.Thread(target=lock, args=(one, 2))
        waiter.start()
        # Either order closes the cycle (the pause only makes the first wait first): InnoDB
        # undoes one of the two transactions.
        time.sleep(0.2)
        lock(two, 1)
        waiter.join(timeout=60)
        assert len(errors) == 1, errors
        return errors[0]
    finally:
        for conn in (first, second):
            conn.close()
        cleanup = provider.connect()
        cleanup.cursor().execute("DROP TABLE IF EXISTS statemodes_deadlock")
        cleanup.close()


def test_a_call_undone_by_a_deadlock_is_a_503_to_try_again(make_provider: MakeProvider) -> None:
    # InnoDB rolled the call's transaction back whole: nothing was done, and the request is
    # answered 503 with Retry-After, which a browser or proxy may send again.
    provider = make_provider(MARIADB)
    error = deadlock_error(provider)
    assert error.args[0] == 1213  # ER_LOCK_DEADLOCK, from InnoDB itself

    def work(conn: Any) -> str:
        raise error

    with pytest.raises(SessionStoreUnavailable, match="Deadlock"):
        provider.run(work)
