"""Every engine behind real uvicorn and ``manage.py runserver`` processes (issue 12, Build 7).

Shared stores run under ``uvicorn --workers 2``; InProc keeps its sessions in one process, so
it runs under ``--workers 1`` (two workers would each see half the sessions). Tests that need
one worker (an unrelated request "on the same worker") use ``--workers 1`` for every engine.
The site is tests/asgiapp (``STATEMODES_MAX_CONNECTIONS = 4``); tests/asgi_servers.py starts
and measures the servers. Counts and ordering prove behaviour; every wait is bounded far above
what a working server needs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.asgi_servers import (
    ROOT,
    SETTINGS,
    Server,
    counter,
    hammer,
    new_session,
    open_handles,
    runserver,
    tcp_connections,
    uvicorn,
)
from tests.conftest import need_service
from tests.fixtures_stateserver import StateServerProcess
from tests.server import get

pytestmark = pytest.mark.slow

MAX_CONNECTIONS = 4  # tests/asgiapp/settings.py
PG_PORT, REDIS_PORT = 5432, 6379
REDIS_URL = "redis://127.0.0.1:6379/15"

ENGINES = [
    pytest.param("inproc", id="inproc"),
    pytest.param("stateserver", id="stateserver", marks=pytest.mark.stateserver),
    pytest.param("sql-sqlite", id="sql-sqlite"),
    pytest.param("sql-pg", id="sql-pg", marks=pytest.mark.postgres),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]
# Stores outside the web process: InProc has no connection to count.
SHARED = ENGINES[1:]


@dataclass
class Store:
    """One engine as the site uses it: the environment of its servers, and how to read it."""

    engine: str
    env: dict[str, str]
    flags: Path
    state_server: StateServerProcess | None = None
    sqlite: str | None = None
    cleanups: list[Callable[[], object]] = field(default_factory=list)

    @property
    def workers(self) -> int:
        """uvicorn workers: two, but one for InProc, whose sessions live in one process."""
        return 1 if self.engine == "inproc" else 2

    def connections(self, pids: list[int]) -> int:
        """Store connections the server processes ``pids`` hold now, seen by the store where
        it can tell (pg_stat_activity, CLIENT LIST, STATS), else by the processes' files."""
        if self.engine == "stateserver":
            assert self.state_server is not None
            # STATS counts every client of this test's own state server: ours is one of them.
            connections: int = stateserver_stats(self.state_server)["connections"]
            return connections - 1
        if self.engine == "sql-sqlite":
            assert self.sqlite is not None
            return sum(open_handles(pids, self.sqlite).values())
        if self.engine == "sql-pg":
            ports = [p for ps in tcp_connections(pids, PG_PORT).values() for p in ps]
            return max(len(ports), pg_backends(ports))
        if self.engine == "redis":
            ports = [p for ps in tcp_connections(pids, REDIS_PORT).values() for p in ps]
            return max(len(ports), redis_clients(ports))
        raise AssertionError(f"{self.engine} keeps no store connections")

    def locks(self) -> int | None:
        """Locks the state server holds (STATS), for the engine that can say; else None."""
        if self.state_server is None:
            return None
        locks: int = stateserver_stats(self.state_server)["locks"]
        return locks


def stateserver_stats(server: StateServerProcess) -> dict[str, Any]:
    from django_statemodes.stateserver.addresses import Address
    from django_statemodes.stateserver.client import StateServerClient

    client = StateServerClient(Address("127.0.0.1", server.port), timeout=5)
    try:
        return client.stats()
    finally:
        client.close()


def pg_backends(client_ports: list[int]) -> int:
    """PostgreSQL's own count of backends serving these client ports (pg_stat_activity)."""
    import psycopg

    with psycopg.connect(host="127.0.0.1", dbname="test", user="root", autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s)", (client_ports,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def redis_clients(client_ports: list[int]) -> int:
    """Redis's own count of clients at these ports (CLIENT LIST)."""
    import redis

    wanted = set(client_ports)
    with redis.Redis.from_url(REDIS_URL, socket_timeout=5) as client:
        listed = client.client_list()
    return sum(1 for c in listed if int(c["addr"].rsplit(":", 1)[1]) in wanted)


def install_sql_tables(env: dict[str, str]) -> None:
    """``manage.py installsqlstate`` for the site's state database, as a user runs it."""
    result = subprocess.run(
        [sys.executable, "manage.py", "installsqlstate", "--database", "state",
         "--type", "persisted", "--verbosity", "0"],
        cwd=ROOT, env={**os.environ, "DJANGO_SETTINGS_MODULE": SETTINGS, **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def forget_pg_sessions(run: str) -> None:
    """Delete this run's rows from the shared ``test`` database (its AppId suffix)."""
    import psycopg

    from django_statemodes.providers.sql import schema

    app = schema.app_id(run)
    with psycopg.connect(host="127.0.0.1", dbname="test", user="root", autocommit=True) as conn:
        conn.execute(
            'DELETE FROM "ASPStateTempSessions" WHERE right("SessionId", 8) = %s',
            (schema.app_suffix(app),),
        )
        conn.execute('DELETE FROM "ASPStateTempApplications" WHERE "AppId" = %s', (app,))


def forget_redis_keys(run: str) -> None:
    import redis

    with redis.Redis.from_url(REDIS_URL, socket_timeout=5) as client:
        keys = list(client.scan_iter(match=f"{run}:*", count=1000))[:100_000]
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    engine: str = request.param
    run = f"asgi{os.getpid()}x{uuid.uuid4().hex[:8]}"
    env = {
        "STATEMODES_ASGI_ENGINE": engine,
        "STATEMODES_ASGI_RUN": run,
        "STATEMODES_ASGI_FLAGS": str(tmp_path),
    }
    made = Store(engine, env, tmp_path)
    try:
        if engine == "stateserver":
            made.state_server = StateServerProcess().start()
            made.cleanups.append(made.state_server.stop)
            env["STATEMODES_ASGI_STATE_PORT"] = str(made.state_server.port)
        elif engine == "sql-sqlite":
            made.sqlite = str(tmp_path / "state.sqlite3")
            env["STATEMODES_ASGI_SQLITE"] = made.sqlite
            install_sql_tables(env)
        elif engine == "sql-pg":
            need_service("PostgreSQL", "127.0.0.1", PG_PORT)
            install_sql_tables(env)
            made.cleanups.append(lambda: forget_pg_sessions(run))
        elif engine == "redis":
            need_service("Redis", "127.0.0.1", REDIS_PORT)
            made.cleanups.append(lambda: forget_redis_keys(run))
        yield made
    finally:
        for cleanup in reversed(made.cleanups):
            cleanup()


def flag_appears(path: Path, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@dataclass
class Call:
    """One request run in a thread: its answer, once it came."""

    port: int
    path: str
    cookie: str | None = None
    timeout: float = 120
    status: int = 0
    body: bytes = b""
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Call:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            self.status, _, self.body = get(self.port, self.path, self.cookie)
        except OSError as exc:
            self.body = repr(exc).encode()
        finally:
            self.done.set()

    def wait(self) -> Call:
        assert self.done.wait(self.timeout), f"{self.path} not answered in {self.timeout} s"
        return self


# a. Zero lost updates: 8 clients x 50 increments of one session.


@pytest.mark.parametrize("store", ENGINES, indirect=True)
def test_uvicorn_async_views_lose_no_update(store: Store) -> None:
    with uvicorn(store.workers, store.env) as server:
        result = hammer(server.port, "/aincrement/")
    print(f"{store.engine}: {result}")
    assert result.expected == 401
    assert result.actual == 401, result


@pytest.mark.parametrize("store", ENGINES, indirect=True)
def test_uvicorn_sync_views_lose_no_update(store: Store) -> None:
    with uvicorn(store.workers, store.env) as server:
        result = hammer(server.port, "/increment/")
    print(f"{store.engine}: {result}")
    assert result.expected == 401
    assert result.actual == 401, result


# f. runserver (threaded: a new thread per request), sync views.


@pytest.mark.parametrize("store", ENGINES, indirect=True)
def test_runserver_sync_views_lose_no_update(store: Store) -> None:
    with runserver(store.env) as server:
        result = hammer(server.port, "/increment/")
    print(f"{store.engine}: {result}")
    assert result.expected == 401
    assert result.actual == 401, result


# b. Bounded store connections after 1,000 requests.


def bound(workers: int) -> int:
    """The most store connections a server may hold: per worker process, a blocking pool
    (sync views run in threads), one pool for its event loop (uvicorn runs one per worker),
    and one listener or subscriber for lock wake-ups: workers x (2 x bound + 1)."""
    return workers * (2 * MAX_CONNECTIONS + 1)


def load_and_count(server: Server, store: Store, paths: list[str]) -> tuple[int, int, int]:
    """Send 1,000 requests from 4 concurrent clients, each on its own sessions (a new one
    every 10th request), through ``paths`` in turn; sample the store connections meanwhile.

    Returns (most connections seen, connections after the load, requests answered 200).
    """
    pids = server.worker_pids()
    most = [store.connections(pids)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            most.append(store.connections(pids))

    answered = [0]
    failures: list[str] = []

    def client(index: int) -> None:
        keys: list[str] = []
        for n in range(250):
            path = paths[(index + n) % len(paths)]
            if n % 10 == 0 or not keys:
                keys.append(new_session(server.port, path))
                answered[0] += 1
                continue
            status, _, body = get(server.port, path, random.choice(keys))
            if status == 200:
                answered[0] += 1
            else:
                failures.append(f"{status}: {body[:200]!r}")

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    try:
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(timeout=300)
    finally:
        stop.set()
        sampler.join(timeout=30)
    assert not failures, failures[:3]
    after = store.connections(pids)
    return max(most + [after]), after, answered[0]


@pytest.mark.parametrize("store", SHARED, indirect=True)
def test_uvicorn_holds_no_more_store_connections_than_the_bound(store: Store) -> None:
    with uvicorn(store.workers, store.env) as server:
        most, after, answered = load_and_count(server, store, ["/aincrement/", "/increment/"])
    print(f"{store.engine} uvicorn: most {most}, after {after}, bound {bound(store.workers)}")
    assert answered == 1000
    assert most <= bound(store.workers), (most, after)


@pytest.mark.parametrize("store", SHARED, indirect=True)
def test_runserver_holds_no_more_store_connections_than_the_bound(store: Store) -> None:
    # One process, a new thread per request: one connection per thread would pass 100 here.
    with runserver(store.env) as server:
        most, after, answered = load_and_count(server, store, ["/increment/"])
    print(f"{store.engine} runserver: most {most}, after {after}, bound {bound(1)}")
    assert answered == 1000
    assert most <= bound(1), (most, after)


# c. Waiters on one session do not stop another session's request on the same worker.


@pytest.mark.parametrize("store", ENGINES, indirect=True)
def test_twenty_waiters_do_not_delay_another_session_on_the_same_worker(store: Store) -> None:
    with uvicorn(1, store.env) as server:
        port = server.port
        held, other = new_session(port), new_session(port)
        holder = Call(port, "/hold/?name=c", held).start()
        assert flag_appears(store.flags / "held-c"), holder.wait().body
        waiters = [Call(port, "/aincrement/", held).start() for _ in range(20)]
        time.sleep(1)  # let them reach their lock wait (the order below does not depend on it)

        unrelated = [
            Call(port, "/aincrement/", other, timeout=30).start().wait(),
            Call(port, "/increment/", other, timeout=30).start().wait(),
            Call(port, "/aincrement/", timeout=30).start().wait(),  # a new session
        ]
        # Answered while the holder still holds the lock: its release flag is not even written.
        holder_done_first = holder.done.is_set()
        (store.flags / "release-c").touch()
        holder.wait()
        for waiter in waiters:
            waiter.wait()
        final = counter(port, held)
    assert not holder_done_first
    assert [call.status for call in unrelated] == [200, 200, 200], [c.body for c in unrelated]
    assert holder.status == 200, holder.body
    assert [w.status for w in waiters] == [200] * 20, [w.body[:200] for w in waiters]
    # Every waiter's increment landed after the holder's: 1 + 1 + 20.
    assert json.loads(holder.body)["counter"] == 2
    assert final == 22


@pytest.mark.parametrize("store", ENGINES, indirect=True)
def test_sync_session_api_in_async_view_fails_at_once_without_blocking_the_loop(
    store: Store,
) -> None:
    with uvicorn(1, store.env) as server:
        port = server.port
        held, free = new_session(port), new_session(port)
        holder = Call(port, "/hold/?name=d", held).start()
        assert flag_appears(store.flags / "held-d"), holder.wait().body

        # The session is locked: a blocking lock wait here would freeze the worker's loop.
        misuse = Call(port, "/sync-in-async/", held, timeout=30).start().wait()
        unrelated = Call(port, "/aincrement/", timeout=30).start().wait()
        holder_done_first = holder.done.is_set()
        (store.flags / "release-d").touch()
        holder.wait()
        # On a session nobody holds, the same mistake gets the same answer.
        misuse_free = Call(port, "/sync-in-async/", free, timeout=30).start().wait()
        time.sleep(0.5)  # let the worker flush its log
        log = server.log()
    assert not holder_done_first
    assert misuse.status == 500, misuse.body
    assert unrelated.status == 200, unrelated.body
    assert holder.status == 200, holder.body
    assert misuse_free.status == 500, misuse_free.body
    # DEBUG is False: the 500 page says nothing; Django's request logger names the error.
    errors = re.findall(r"^\S*SessionStateSyncInAsync: .*$", log, re.M)
    assert errors, log[-3000:]
    assert "aget" in errors[0], errors[0]


# e. Clients that disconnect mid-request leave no lock behind.


async def disconnecting_clients(
    port: int,
    keys: list[str],
    path: str,
    *,
    seconds: float = 10,
    tasks: int = 24,
    most: int = 4000,
) -> dict[str, int]:
    """For ``seconds`` (and at most ``most`` requests), send increments of ``keys`` from
    ``tasks`` concurrent clients, most closing their socket at a random moment, answered or
    not; half of them reset the connection instead of closing it. Return 200s per key.

    Python sockets, not wrk: wrk cannot drop a request half-way on purpose.
    """
    acked = dict.fromkeys(keys, 0)
    sent = [0]
    deadline = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < deadline and sent[0] < most:
            sent[0] += 1
            key = random.choice(keys)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET {path}?work={random.randint(0, 40)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Cookie: sessionid={key}\r\nConnection: close\r\n\r\n".encode()
            )
            # Most leave within 60 ms, answered or not; one in five waits for its answer, so
            # that acknowledged writes are there to check.
            patience = random.uniform(0.001, 0.06) if random.random() < 0.8 else 5.0
            try:
                response = await asyncio.wait_for(reader.read(), patience)
            except TimeoutError:
                response = b""
            if response.startswith(b"HTTP/1.1 200"):
                acked[key] += 1
            if random.random() < 0.5:
                writer.transport.abort()  # RST: the server sees the peer vanish
            else:
                writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    await asyncio.gather(*(client() for _ in range(tasks)))
    return acked


def peek(port: int, key: str) -> dict[str, Any]:
    status, _, body = get(port, f"/peek/?key={key}")
    assert status == 200, body
    value: dict[str, Any] = json.loads(body)
    return value


@pytest.mark.parametrize("path", ["/aincrement/", "/increment/"], ids=["async", "sync"])
@pytest.mark.parametrize("store", ENGINES, indirect=True)
def test_clients_that_disconnect_mid_request_leave_no_lock(store: Store, path: str) -> None:
    # Django's ASGI handler cancels a request whose client disconnects (Django 5.0+): an async
    # view at any await point, a sync view's awaiting middleware while its thread runs on.
    with uvicorn(store.workers, store.env) as server:
        port = server.port
        keys = [new_session(port) for _ in range(4)]
        acked = asyncio.run(disconnecting_clients(port, keys, path))

        # Requests still running finish within their work (40 ms at most): a lock left by a
        # cancelled one stays for the lock timeout (110 s), far beyond this 20 s bound.
        deadline = time.monotonic() + 20
        held = keys
        while held and time.monotonic() < deadline:
            held = [key for key in keys if peek(port, key)["locked"]]
            time.sleep(0.2)
        locked = {key: peek(port, key) for key in held}
        assert held == [], f"{len(held)} of 4 sessions still locked: {locked}"
        assert store.locks() in (None, 0)
        # A fresh request of each session gets its lock (well within the lock timeout) and
        # finds every acknowledged increment.
        finals = {key: counter(port, key) for key in keys}
        fresh = [get(port, "/aincrement/", key)[0] for key in keys]
    assert fresh == [200] * 4
    for key in keys:
        assert finals[key] >= 1 + acked[key], (finals, acked)
    assert sum(acked.values()) > 0  # some requests were answered before their client left
