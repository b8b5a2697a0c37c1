"""Lock wake-ups from one listener per process, to blocking and async waiters alike.

A store that can push a notification (PostgreSQL's ``NOTIFY``, Redis's ``PUBLISH``) is heard
on one dedicated connection per process, read by one daemon thread, which calls ``wake(key)``.
Waiters register *before* they look at the lock a last time, so a release between that look and
the wait is never missed. A blocking waiter sleeps on a ``threading.Event``; an async waiter on
a future of its own loop, set through ``call_soon_threadsafe``: no async wait ever holds a
thread of the event loop's executor, and the number of store connections does not grow with
the number of waiters. Django-free.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

__all__ = ["Wakeups"]


class Wakeups:
    """Waiters by key (a session key, or a store's own id for it)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._events: dict[str, set[threading.Event]] = {}
        self._futures: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    @contextmanager
    def expecting(self, key: str) -> Iterator[threading.Event]:
        """Register a blocking waiter for ``key``; ``event.wait(timeout)`` waits for ``wake``."""
        event = threading.Event()
        with self._mutex:
            self._events.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            with self._mutex:
                events = self._events.get(key)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._events[key]

    @asynccontextmanager
    async def aexpecting(self, key: str) -> AsyncIterator[asyncio.Future[None]]:
        """Register an async waiter for ``key``; await the future (with a timeout)."""
        loop = asyncio.get_running_loop()
        entry = (loop, loop.create_future())
        with self._mutex:
            self._futures.setdefault(key, set()).add(entry)
        try:
            yield entry[1]
        finally:
            with self._mutex:
                futures = self._futures.get(key)
                if futures is not None:
                    futures.discard(entry)
                    if not futures:
                        del self._futures[key]

    def wake(self, key: str) -> None:
        """Wake every waiter of ``key`` (from any thread)."""
        with self._mutex:
            events = list(self._events.get(key, ()))
            futures = list(self._futures.get(key, ()))
        for event in events:
            event.set()
        for loop, future in futures:
            _resolve(loop, future)

    def wake_all(self) -> None:
        """Wake every waiter: the listener reconnected and may have missed notifications."""
        with self._mutex:
            events = [event for group in self._events.values() for event in group]
            futures = [entry for group in self._futures.values() for entry in group]
        for event in events:
            event.set()
        for loop, future in futures:
            _resolve(loop, future)

    def waiters(self) -> int:
        """Return how many waiters are registered now (tests, statistics)."""
        with self._mutex:
            return sum(map(len, self._events.values())) + sum(map(len, self._futures.values()))


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    def set_result() -> None:
        if not future.done():
            future.set_result(None)

    try:
        loop.call_soon_threadsafe(set_result)
    except RuntimeError:  # the waiter's loop is closed: nobody waits any more
        pass
