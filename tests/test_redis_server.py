"""The Redis provider behind a real multi-process server (gunicorn, 2 workers x 4 threads):
zero lost updates beside Django's cache engine on django-redis, and a Redis restart under load."""

from __future__ import annotations

import threading
import time

import pytest

from tests.redis_servers import RedisServer, running
from tests.server import get, gunicorn, hammer, session_cookie

pytestmark = [pytest.mark.slow, pytest.mark.redis]

APP = "tests.redisapp.wsgi"
SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.redisapp.settings"}
PID = "x-worker-pid"  # set on every response by tests/redisapp/middleware.py


@pytest.mark.usefixtures("redis_server")
def test_redis_provider_loses_no_update_across_two_worker_processes() -> None:
    with gunicorn(APP, workers=2, threads=4, env=SETTINGS) as port:
        pids: set[str] = set()
        expected, actual = hammer(port, clients=8, increments=50, served=pids)
    assert expected == 401
    assert actual == 401
    # Both processes served increments: the lock held across processes, not just threads.
    assert len(pids) == 2


@pytest.mark.usefixtures("redis_server")
def test_django_cache_engine_on_django_redis_loses_updates_on_the_same_test() -> None:
    env = {**SETTINGS, "STATEMODES_TEST_ENGINE": "django-cache"}
    with gunicorn(APP, workers=2, threads=4, env=env) as port:
        expected, actual = hammer(port, clients=8, increments=50)
    assert expected == 401
    assert actual < expected  # the control: no session locking in Django


def test_a_redis_restart_gives_clear_503s_then_recovers_without_restarting_workers() -> None:
    server = RedisServer()
    with running(server):
        env = {**SETTINGS, "STATEMODES_TEST_REDIS_URL": server.url}
        with gunicorn(APP, workers=2, threads=4, env=env) as port:
            status, headers, _ = get(port, "/increment/")
            assert status == 200
            cookie = session_cookie(headers)
            statuses: list[tuple[float, int, bytes, str]] = []
            pids: list[tuple[float, str]] = []
            stop = threading.Event()

            def load() -> None:
                while not stop.is_set():
                    status, headers, body = get(port, "/increment/", cookie)
                    now = time.monotonic()
                    statuses.append((now, status, body, headers.get("retry-after", "")))
                    pids.append((now, headers[PID]))
                    time.sleep(0.01)

            clients = [threading.Thread(target=load) for _ in range(4)]
            for client in clients:
                client.start()
            time.sleep(0.5)
            killed_at = time.monotonic()
            server.kill()
            time.sleep(1.5)
            restarted_at = time.monotonic()
            server.start()
            time.sleep(1.5)
            stop.set()
            for client in clients:
                client.join(timeout=30)
            # After the restart, a fresh session works in the same (never restarted) workers.
            status, headers, body = get(port, "/increment/")
            assert status == 200 and b'"counter": 1' in body
            pids.append((time.monotonic(), headers[PID]))

    before = [s for t, s, _, _ in statuses if t < killed_at]
    during = [(s, b, r) for t, s, b, r in statuses if killed_at + 0.2 < t < restarted_at]
    after = [s for t, s, _, _ in statuses if t > restarted_at + 0.5]
    assert before and set(before) == {200}
    assert during and all(s == 503 for s, _, _ in during)
    assert all(b"STATEMODES_REDIS_ALIAS" in b and r == "5" for _, b, r in during)
    assert after and set(after) == {200}  # recovered; the old session is gone with Redis's data
    assert {s for _, s, _, _ in statuses} <= {200, 503}
    # The same two worker processes served before, during and after the outage: recovery
    # needed no worker restart (a restarted worker has a new pid).
    pids_before = {p for t, p in pids if t < killed_at}
    pids_after = {p for t, p in pids if t > restarted_at + 0.5}
    assert len(pids_before) == 2
    assert pids_after == pids_before
    assert {p for _, p in pids} == pids_before
