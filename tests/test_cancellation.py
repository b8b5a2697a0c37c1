"""A cancelled async request leaves no lock behind and loses no acknowledged write (issue 12).

ASGI servers cancel a request's task when its client disconnects, on a timeout or at shutdown,
at whatever ``await`` it is in. Each case here pauses a request at one await point (``Pausing``
stops the engine's provider before or after a store call), cancels it there, lets the paused
store call go on, waits for the core's background cleanups (``cancellation.drain``), and then
asks the store itself: the session is not locked (``get_exclusive`` gets it at once) and what
was acknowledged before the cancel is stored. Every engine, with its real store.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from django_statemodes.core import cancellation, locking
from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.middleware import SessionStateMiddleware
from django_statemodes.modes import READ_WRITE
from django_statemodes.providers.base import SessionStateProvider
from tests.async_engines import DATABASES, ENGINES, Pausing, use_engine

pytestmark = pytest.mark.django_db(databases=DATABASES)

#: Far above any expected time: a bound that only a real hang reaches.
HANG = 60.0


@pytest.fixture(params=ENGINES)
def engine(
    request: pytest.FixtureRequest, sql_tables: list[str]
) -> Iterator[type[StateModeSessionBase]]:
    store, overrides = use_engine(request.param, request)
    with overrides:
        yield store


@pytest.fixture
def key(engine: type[StateModeSessionBase]) -> Iterator[str]:
    """A stored session ``{"n": 1}``, not locked."""
    store = engine()
    store["n"] = 1
    store.save()
    assert store.session_key is not None
    yield store.session_key
    engine().delete(store.session_key)


def assert_unlocked(engine: type[StateModeSessionBase], key: str) -> None:
    provider = engine.get_provider()
    item = provider.get_exclusive(key)
    assert item is not None
    assert not item.locked  # nobody holds it: the lock was granted to this call at once
    provider.release(key, item.lock_id)
    assert locking.waiting(key) == 0


def stored(engine: type[StateModeSessionBase], key: str) -> dict[str, Any]:
    return engine(key).load()


def paused(session: StateModeSessionBase, point: str) -> Pausing:
    pausing = Pausing(session._provider, point)
    session._provider = cast(SessionStateProvider, pausing)  # the store, paused at one point
    return pausing


async def cancel_at(task: asyncio.Task[Any], reached: Awaitable[Any]) -> None:
    """Cancel ``task`` once ``reached`` completes; the task must end cancelled."""
    await asyncio.wait_for(reached, HANG)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, HANG)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario()
        await asyncio.wait_for(cancellation.drain(), HANG)

    asyncio.run(main())


# The lock request.


@pytest.mark.parametrize("point", ["aget_exclusive:before", "aget_exclusive:after"])
def test_cancelled_around_the_lock_request(
    engine: type[StateModeSessionBase], key: str, point: str
) -> None:
    async def scenario() -> None:
        session = engine(key, access=READ_WRITE)
        pausing = paused(session, point)
        task = asyncio.create_task(session.aget("n"))
        await cancel_at(task, pausing.paused.wait())
        # The store call goes on: "after", the store has granted a lock the request will never
        # learn of; "before", it is about to. Either way the core releases it.
        pausing.resume()

    run(scenario)
    assert_unlocked(engine, key)
    assert stored(engine, key) == {"n": 1}


@pytest.mark.parametrize("point", ["await_for_release:before", "await_for_release:after"])
def test_cancelled_while_waiting_for_the_lock(
    engine: type[StateModeSessionBase], key: str, point: str
) -> None:
    holder = engine(key, access=READ_WRITE)

    async def scenario() -> None:
        assert await holder.aget("n") == 1  # holds the lock
        waiter = engine(key, access=READ_WRITE)
        pausing = paused(waiter, point)
        task = asyncio.create_task(waiter.aget("n"))
        if point.endswith("after"):
            await asyncio.wait_for(_queued(key), HANG)
            await holder.afinish(False)  # the waiter wakes, then stops right after its wait
        await cancel_at(task, pausing.paused.wait())
        assert locking.waiting(key) == 0  # left the session's queue
        pausing.resume()
        if not holder.released:
            await holder.afinish(False)

    run(scenario)
    assert_unlocked(engine, key)
    assert stored(engine, key) == {"n": 1}


async def _queued(key: str) -> None:
    while locking.waiting(key) == 0:
        await asyncio.sleep(0.005)


# Through the middleware: the view, the save, the release after a failure.


def request_for(key: str) -> HttpRequest:
    request = RequestFactory().get("/cancel-test/")
    request.COOKIES[settings.SESSION_COOKIE_NAME] = key
    return request


class Scene:
    """One request through the async middleware, paused at ``point`` of its session's store."""

    def __init__(self, engine: type[StateModeSessionBase], point: str) -> None:
        self.engine = engine
        self.point = point
        self.in_view = asyncio.Event()
        self.pausing: Pausing | None = None

    def attach(self, request: HttpRequest) -> StateModeSessionBase:
        session = request.session
        assert isinstance(session, StateModeSessionBase)
        if self.pausing is None:
            self.pausing = paused(session, self.point)
        return session

    async def reached(self) -> None:
        while self.pausing is None:
            await asyncio.sleep(0.005)
        await self.pausing.paused.wait()


@pytest.mark.parametrize("again", [False, True], ids=["once", "twice"])
def test_cancelled_during_the_view(
    engine: type[StateModeSessionBase], key: str, again: bool
) -> None:
    """The middleware releases without saving; a save the view awaited is kept."""
    scene = Scene(engine, "arelease:before" if again else "none")

    async def view(request: HttpRequest) -> HttpResponse:
        session = scene.attach(request)
        await session.aset("n", 2)
        await session.asave()  # acknowledged: must survive the cancel
        await session.aset("n", 3)  # never acknowledged: the cancel drops it
        scene.in_view.set()
        await asyncio.Event().wait()  # a long view, until cancelled
        return HttpResponse("unreachable")

    async def scenario() -> None:
        task = asyncio.create_task(SessionStateMiddleware(view)(request_for(key)))
        await asyncio.wait_for(scene.in_view.wait(), HANG)
        task.cancel()
        if again:
            # Cancelled once more while the middleware's release is on its way to the store.
            await cancel_at(task, scene.reached())
            assert scene.pausing is not None
            scene.pausing.resume()
        else:
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, HANG)

    run(scenario)
    assert_unlocked(engine, key)
    assert stored(engine, key) == {"n": 2}


@pytest.mark.parametrize("point", ["aset_and_release:before", "aset_and_release:after"])
def test_cancelled_during_the_final_save(
    engine: type[StateModeSessionBase], key: str, point: str
) -> None:
    """The save and release in flight complete: the view's response was produced."""
    scene = Scene(engine, point)

    async def view(request: HttpRequest) -> HttpResponse:
        session = scene.attach(request)
        await session.aset("n", 5)
        return HttpResponse("ok")

    async def scenario() -> None:
        task = asyncio.create_task(SessionStateMiddleware(view)(request_for(key)))
        await cancel_at(task, scene.reached())
        assert scene.pausing is not None
        scene.pausing.resume()

    run(scenario)
    assert_unlocked(engine, key)
    assert stored(engine, key) == {"n": 5}


def test_cancelled_during_a_save_in_the_view(engine: type[StateModeSessionBase], key: str) -> None:
    """``asave()`` cancelled midway: unacknowledged, it may land or not, but no lock stays."""
    scene = Scene(engine, "aset_and_release:before")

    async def view(request: HttpRequest) -> HttpResponse:
        session = scene.attach(request)
        await session.aset("n", 7)
        await session.asave()
        return HttpResponse("unreachable")

    async def scenario() -> None:
        task = asyncio.create_task(SessionStateMiddleware(view)(request_for(key)))
        await cancel_at(task, scene.reached())
        assert scene.pausing is not None
        scene.pausing.resume()

    run(scenario)
    assert_unlocked(engine, key)
    assert stored(engine, key)["n"] in (1, 7)


def test_a_view_thread_that_gets_the_lock_after_the_request_ended_releases_it(
    engine: type[StateModeSessionBase], key: str
) -> None:
    """A sync view under ASGI runs on in its thread after the async middleware was cancelled
    and released (Django cannot stop a thread): a lock it is granted afterwards is released."""
    holder = engine(key, access=READ_WRITE)
    assert holder.load() == {"n": 1}
    session = engine(key, access=READ_WRITE)
    loaded: list[dict[str, Any]] = []
    view = threading.Thread(target=lambda: loaded.append(session.load()), daemon=True)
    view.start()
    deadline = time.monotonic() + HANG
    while locking.waiting(key) == 0:  # the view's thread waits behind the holder
        assert time.monotonic() < deadline
        time.sleep(0.005)
    session.finish(False)  # the cancelled middleware's release: no lock of its own yet
    holder.finish(False)
    view.join(HANG)
    assert loaded == [{}]  # granted, released at once: the ended request reads nothing
    assert_unlocked(engine, key)
    assert stored(engine, key) == {"n": 1}
