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


@pytest.mark.usefixtures("redis_server")
def test_redis_provider_loses_no_update_across_two_worker_processes() -> None:
    with gunicorn(APP, workers=2, threads=4, env=SETTINGS) as port:
        expected, actual = hammer(port, clients=8, increments=50)
    assert expected == 401
    assert actual == 401


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
            stop = threading.Event()

            def load() -> None:
                while not stop.is_set():
                    status, headers, body = get(port, "/increment/", cookie)
                    statuses.append(
                        (time.monotonic(), status, body, headers.get("retry-after", ""))
                    )
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

    before = [s for t, s, _, _ in statuses if t < killed_at]
    during = [(s, b, r) for t, s, b, r in statuses if killed_at + 0.2 < t < restarted_at]
    after = [s for t, s, _, _ in statuses if t > restarted_at + 0.5]
    assert before and set(before) == {200}
    assert during and all(s == 503 for s, _, _ in during)
    assert all(b"STATEMODES_REDIS_ALIAS" in b and r == "5" for _, b, r in during)
    assert after and set(after) == {200}  # recovered; the old session is gone with Redis's data
    assert {s for _, s, _, _ in statuses} <= {200, 503}
