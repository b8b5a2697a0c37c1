"""Web farm: separate gunicorn servers share sessions through one real state server."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from django_statemodes.stateserver.addresses import parse_address
from django_statemodes.stateserver.client import StateServerClient
from tests.farm import Browser, WebServer
from tests.fixtures_stateserver import StateServerProcess

pytestmark = [pytest.mark.stateserver, pytest.mark.slow]


def wait_for_both_workers(port: int, timeout: float = 30) -> None:
    """Return once both worker processes answer: the second may still be starting."""
    pids: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(pids) < 2:
        assert time.monotonic() < deadline, f"only {pids} answered in {timeout} s"
        with ThreadPoolExecutor(8) as pool:
            for status, body in pool.map(lambda _: Browser(port).get("/count"), range(16)):
                assert status == 200, body
                pids.add(body.split()[1])


def test_two_web_servers_share_a_session_and_keep_it_over_their_restarts(
    stateserver: StateServerProcess,
) -> None:
    web_a = WebServer(stateserver.connection).start()
    web_b = WebServer(stateserver.connection).start()
    try:
        user = Browser(web_a.port)
        assert user.counter("/incr", web_a.port) == 1
        assert user.counter("/incr", web_b.port) == 2  # read and updated by the other server
        assert user.counter("/count", web_a.port) == 2
        web_a.kill()
        web_b.kill()
        web_a.start()
        web_b.start()
        assert user.counter("/count", web_b.port) == 2
        assert user.counter("/incr", web_a.port) == 3
    finally:
        web_a.stop()
        web_b.stop()


def test_concurrent_increments_across_workers_and_threads_lose_no_update(
    stateserver: StateServerProcess,
) -> None:
    clients, increments = 8, 50
    with WebServer(stateserver.connection, workers=2, threads=4) as web:
        wait_for_both_workers(web.port)
        first = Browser(web.port)
        initial = first.counter("/incr")
        pids: set[str] = set()
        errors: list[BaseException] = []

        def work() -> None:
            user = Browser(web.port, first.cookie)
            try:
                for _ in range(increments):
                    # 8 clients on 4 threads a worker: waiters past the session's share of the
                    # threads get 503 + Retry-After at once and send the increment again.
                    for _attempt in range(20):
                        status, body = user.get("/incr")
                        if status != 503 or "Too many requests" not in body:
                            break
                        time.sleep(0.05)
                    assert status == 200, body
                    pids.add(body.split()[1])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors[:3]
        assert first.counter("/count") == initial + clients * increments
        assert len(pids) == 2  # both worker processes served the session


def test_a_worker_killed_while_holding_the_lock_does_not_block_the_session(
    stateserver: StateServerProcess,
    tmp_path: Path,
) -> None:
    hold_file = tmp_path / "holder.pid"
    with WebServer(stateserver.connection, workers=2, FARM_HOLD_FILE=str(hold_file)) as web:
        logged = web.log.stat().st_size  # the log is appended to: read only this run's lines
        user = Browser(web.port)
        start = user.counter("/incr")
        holder = threading.Thread(target=lambda: _quietly(user, "/hold"), daemon=True)
        holder.start()
        deadline = time.monotonic() + 20
        while not hold_file.exists() or not hold_file.read_text():
            assert time.monotonic() < deadline, "the holding request never started"
            time.sleep(0.05)
        os.kill(int(hold_file.read_text()), signal.SIGKILL)
        # STATEMODES_LOCK_TIMEOUT is 60 s in the farm app, twice the browser's 30 s timeout: only
        # the server's release of the dead connection's lock lets this request through, and no
        # worker broke the lock (the core logs every lock it breaks).
        assert user.counter("/incr") == start + 1
    assert b"Breaking the lock" not in web.log.read_bytes()[logged:]


def _quietly(user: Browser, path: str) -> None:
    try:
        user.get(path)
    except OSError:
        pass  # the worker serving it was killed


def test_web_servers_spelling_the_farm_differently_share_every_session() -> None:
    """``localhost`` here, ``127.0.0.1`` there: each key is placed on the same state server."""
    with StateServerProcess() as a, StateServerProcess() as b, StateServerProcess() as c:
        ports = (a.port, b.port, c.port)
        one = "tcpip=localhost:{};tcpip=127.0.0.1:{};127.0.0.1:{}".format(*ports)
        other = "127.0.0.1:{};tcpip=LOCALHOST:{};tcpip=localhost:{}".format(*ports)
        with WebServer(one) as web_a, WebServer(other) as web_b:
            users = [Browser(web_a.port) for _ in range(12)]
            for turn in range(1, 7):
                for user in users:
                    port = web_a.port if turn % 2 else web_b.port
                    assert user.counter("/incr", port) == turn  # one session, never a fresh one
        clients = _clients(a, b, c)
        held = [client.stats()["sessions"] for client in clients]
        for client in clients:
            client.close()
        assert sum(held) == len(users)
        assert len([count for count in held if count]) > 1  # spread over the farm


def _clients(*servers: StateServerProcess) -> list[StateServerClient]:
    return [
        StateServerClient(parse_address(server.connection), application="farm")
        for server in servers
    ]
