"""One user's parallel requests never stop other users from being served (issue 12, Build 5).

gunicorn, 2 workers x 4 threads, the Redis provider: one request holds session A's lock (a view
that waits for the test's flag file), 8 more requests of A arrive at once. Their blocking waits
may hold only a share of each worker's threads (``STATEMODES_LOCK_WAITING_THREADS``, derived:
half of the most requests the worker has served at once); the rest get 503 + Retry-After at
once. So a request of another session B is answered while A's lock is still held: proved by
order (B's answer arrives before the test lets the holder go), not by timing. The same rule in
one process, with Django's test client: who is counted and who is not.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path

from django_statemodes.backends.inproc import SessionStore as InProc
from django_statemodes.core import locking
from django_statemodes.exceptions import SessionQueueFull
from django_statemodes.modes import READ_WRITE
from tests.server import get, gunicorn, session_cookie

APP = "tests.starvationapp.wsgi"
#: Far above any expected wait: only a starved or hung server reaches it.
BOUND = 60.0


def wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def new_session(port: int) -> str:
    status, headers, body = get(port, "/increment/")
    assert status == 200, body
    return session_cookie(headers)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.usefixtures("redis_server")
def test_parallel_requests_of_one_session_leave_threads_for_other_users(tmp_path: Path) -> None:
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.starvationapp.settings",
        "STATEMODES_STARVATION_DIR": str(tmp_path),
    }
    with gunicorn(APP, workers=2, threads=4, env=env) as port:
        a, b = new_session(port), new_session(port)
        holder: list[int] = []
        holder_thread = threading.Thread(
            target=lambda: holder.append(get(port, "/hold/", a)[0]), daemon=True
        )
        holder_thread.start()
        wait_until((tmp_path / "held").exists, "the holder to lock session A")

        # (status, Retry-After) of each of A's parallel requests.
        answers: list[tuple[int, str | None]] = []

        def request_a() -> None:
            status, headers, _ = get(port, "/increment/", a)
            answers.append((status, headers.get("retry-after")))

        parallel = [threading.Thread(target=request_a, daemon=True) for _ in range(8)]
        for thread in parallel:
            thread.start()
        # Some of A's requests were refused at once: the workers are full of A's waiters.
        wait_until(lambda: any(status == 503 for status, _ in answers), "a 503 for session A")

        status_b, _, body_b = get(port, "/increment/", b)
        # Answered while A's holder still holds the lock: it cannot return before the flag.
        assert holder_thread.is_alive()
        assert holder == []
        assert status_b == 200, body_b

        (tmp_path / "release").touch()
        holder_thread.join(BOUND)
        for thread in parallel:
            thread.join(BOUND)

    assert holder == [200]
    assert len(answers) == 8
    refused = [retry for status, retry in answers if status == 503]
    assert refused and all(retry is not None and int(retry) > 0 for retry in refused)
    # The waiters within the share were served once the holder let go.
    assert {status for status, _ in answers} <= {200, 503}


# In one process: Django's test client through SessionStateMiddleware.


def touch(request: HttpRequest) -> HttpResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return HttpResponse(str(request.session["n"]))


async def atouch(request: HttpRequest) -> HttpResponse:
    await request.session.aset("n", await request.session.aget("n", 0) + 1)
    return HttpResponse("ok")


urlpatterns = [path("touch/", touch), path("atouch/", atouch)]

ONE_THREAD = override_settings(
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["django_statemodes.middleware.SessionStateMiddleware"],
    SESSION_ENGINE="django_statemodes.backends.inproc",
    STATEMODES_LOCK_WAITING_THREADS=1,
)


@pytest.fixture
def held() -> Iterator[tuple[str, InProc]]:
    """A stored InProc session, locked by a holder the test releases."""
    store = InProc()
    store["n"] = 0
    store.save()
    key = store.session_key
    assert key is not None
    holder = InProc(key, access=READ_WRITE)
    holder.load()
    yield key, holder
    holder.finish(False)
    InProc().delete(key)


def client_get(key: str, path: str, into: list[int]) -> threading.Thread:
    def request() -> None:
        client = Client()
        client.cookies["sessionid"] = key
        into.append(client.get(path).status_code)

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    return thread


@ONE_THREAD
def test_a_waiting_thread_beyond_the_share_gets_503_at_once(held: tuple[str, InProc]) -> None:
    key, holder = held
    first: list[int] = []
    waiter = client_get(key, "/touch/", first)
    wait_until(lambda: locking.waiting_threads(key) == 1, "the first waiter")
    second: list[int] = []
    client_get(key, "/touch/", second).join(BOUND)
    assert second == [503]  # answered while the first still waits: no second thread held
    assert first == []
    holder.finish(False)
    waiter.join(BOUND)
    assert first == [200]


@ONE_THREAD
def test_async_waiters_hold_no_thread_and_are_not_counted(held: tuple[str, InProc]) -> None:
    key, holder = held
    first: list[int] = []
    waiter = client_get(key, "/touch/", first)
    wait_until(lambda: locking.waiting_threads(key) == 1, "the blocking waiter")
    answers: list[int] = []

    async def async_request() -> None:
        client = AsyncClient()
        client.cookies["sessionid"] = key
        answers.append((await client.get("/atouch/")).status_code)

    thread = threading.Thread(target=lambda: asyncio.run(async_request()), daemon=True)
    thread.start()
    wait_until(lambda: locking.waiting(key) == 2, "the async waiter in the queue")
    assert locking.waiting_threads(key) == 1
    holder.finish(False)
    waiter.join(BOUND)
    thread.join(BOUND)
    assert first == [200] and answers == [200]


@ONE_THREAD
def test_threads_outside_requests_are_not_counted(held: tuple[str, InProc]) -> None:
    # A script's or a test's own threads are no server's: only the queue limit bounds them.
    key, holder = held
    failures: list[BaseException] = []

    def load() -> None:
        session = InProc(key, access=READ_WRITE)
        try:
            session.load()
            session.finish(False)
        except SessionQueueFull as exc:
            failures.append(exc)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_until(lambda: locking.waiting(key) == 3, "three waiters")
    assert locking.waiting_threads(key) == 0
    holder.finish(False)
    for thread in threads:
        thread.join(BOUND)
    assert failures == []
