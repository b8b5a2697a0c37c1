"""Bounded connection pools: a process holds at most a configured number of store connections.

One request thread or task borrows a connection for one store call and gives it back, so the
number of connections follows the number of calls in flight, never the number of threads that
ever served a request (``runserver`` and ASGI's ``sync_to_async`` start new ones all the time).
Idle connections are closed after ``idle_timeout``; a request that finds every connection busy
waits up to ``wait`` seconds, then gets ``SessionPoolExhausted`` (the middleware's 503).

``Pool`` serves blocking code; ``AsyncPool`` serves one event loop (async drivers bind a
connection to the loop that opened it), and ``PerLoop`` keeps one of it per loop. Django-free.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from django_statemodes.exceptions import SessionPoolExhausted

__all__ = ["AsyncPool", "PerLoop", "Pool", "PoolStats", "exhausted"]

C = TypeVar("C")
T = TypeVar("T")


@dataclass
class PoolStats:
    """What a pool did: for tests, the status page and capacity planning."""

    opened: int = 0
    closed: int = 0
    waited: int = 0
    exhausted: int = 0

    @property
    def open(self) -> int:
        return self.opened - self.closed


def exhausted(name: str, size: int, wait: float) -> SessionPoolExhausted:
    """Return the error for a pool of ``size`` connections that stayed busy ``wait`` seconds."""
    return SessionPoolExhausted(
        f"All {size} connections of this process to {name} stayed busy for {wait:g} s "
        "(STATEMODES_MAX_CONNECTIONS, STATEMODES_CONNECTION_WAIT)."
    )


class _Idle(Generic[C]):
    """The idle connections, newest last (LIFO: the oldest ones age out and get closed)."""

    def __init__(self) -> None:
        self.items: list[tuple[C, float]] = []

    def take(self, now: float, idle_timeout: float) -> tuple[C | None, list[C]]:
        """Return a fresh-enough idle connection (or None) and the stale ones to close."""
        stale = self.stale(now, idle_timeout)
        conn = self.items.pop()[0] if self.items else None
        return conn, stale

    def stale(self, now: float, idle_timeout: float) -> list[C]:
        """Remove and return the connections idle for longer than ``idle_timeout``."""
        stale: list[C] = []
        while self.items and now - self.items[0][1] > idle_timeout:
            stale.append(self.items.pop(0)[0])
        return stale


class _Slots(Generic[C]):
    """What both pools count, and the steps of an acquire they share; the caller holds its lock."""

    def __init__(self, *, size: int, wait: float, idle_timeout: float, name: str) -> None:
        self.size, self.wait, self.idle_timeout, self.name = max(1, size), wait, idle_timeout, name
        self._idle: _Idle[C] = _Idle()
        self._busy = 0  # connections lent out or being opened
        self._generation = 0  # bumped by close(): connections lent before it are not kept
        self.stats = PoolStats()

    @property
    def in_use(self) -> int:
        """How many connections are lent out (or being opened) now."""
        return self._busy

    def _claim(self, stale: list[C]) -> tuple[bool, C | None, int]:
        """Claim an idle connection, or a slot to open one below the bound; add the stale ones.

        Returns (claimed, the idle connection or None for a new one, the pool's generation).
        """
        conn, expired = self._idle.take(time.monotonic(), self.idle_timeout)
        stale += expired
        claimed = conn is not None or self._busy + len(self._idle.items) < self.size
        if claimed:
            self._busy += 1
        return claimed, conn, self._generation

    def _deadline(self, deadline: float | None) -> float:
        """Start the wait on the first call; raise SessionPoolExhausted once it has run out."""
        now = time.monotonic()
        if deadline is None:
            deadline = now + self.wait
            self.stats.waited += 1
        if now >= deadline:
            self.stats.exhausted += 1
            raise exhausted(self.name, self.size, self.wait)
        return deadline


class Pool(_Slots[C]):
    """A bounded LIFO pool of blocking connections, shared by the threads of a process."""

    def __init__(
        self,
        connect: Callable[[], C],
        close: Callable[[C], None],
        *,
        size: int,
        wait: float,
        idle_timeout: float,
        name: str,
    ) -> None:
        super().__init__(size=size, wait=wait, idle_timeout=idle_timeout, name=name)
        self._connect, self._close = connect, close
        self._cond = threading.Condition()

    @contextmanager
    def connection(self) -> Iterator[C]:
        """Lend a connection for one call; a call that fails with an exception discards it."""
        conn, generation = self.acquire()
        try:
            yield conn
        except BaseException:
            self.release(conn, generation, broken=True)
            raise
        self.release(conn, generation)

    def acquire(self) -> tuple[C, int]:
        """Return an idle connection, a new one below the bound, or wait for one."""
        stale: list[C] = []
        with self._cond:
            deadline: float | None = None
            while True:
                claimed, conn, generation = self._claim(stale)
                if claimed:
                    break
                deadline = self._deadline(deadline)
                self._cond.wait(deadline - time.monotonic())
        self._close_all(stale)
        if conn is None:
            try:
                conn = self._connect()
            except BaseException:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify()
                raise
            with self._cond:  # threads count at once: no increment lost
                self.stats.opened += 1
        return conn, generation

    def release(self, conn: C, generation: int, *, broken: bool = False) -> None:
        """Take a connection back; close it if ``broken`` or lent before ``close()``."""
        with self._cond:
            self._busy -= 1
            keep = not broken and generation == self._generation
            if keep:
                self._idle.items.append((conn, time.monotonic()))
            self._cond.notify()
        if not keep:
            self._close_all([conn])

    def sweep(self) -> int:
        """Close the connections idle for longer than ``idle_timeout``; return how many.

        ``acquire`` does it too, but a process that has gone quiet calls nothing: its owner's
        housekeeping (a listener thread's tick) calls this.
        """
        with self._cond:
            stale = self._idle.stale(time.monotonic(), self.idle_timeout)
        self._close_all(stale)
        return len(stale)

    def close(self) -> None:
        """Close the idle connections; those lent out now are closed when they come back."""
        with self._cond:
            idle = [conn for conn, _ in self._idle.items]
            self._idle.items = []
            self._generation += 1
            self._cond.notify_all()
        self._close_all(idle)

    def _close_all(self, conns: list[C]) -> None:
        if conns:
            with self._cond:
                self.stats.closed += len(conns)
        for conn in conns:
            try:
                self._close(conn)
            except Exception:  # a broken connection may fail to close; it is gone either way
                pass


class AsyncPool(_Slots[C]):
    """``Pool`` for one event loop: waiting for a connection never blocks the loop."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[C]],
        close: Callable[[C], Awaitable[None]],
        *,
        size: int,
        wait: float,
        idle_timeout: float,
        name: str,
    ) -> None:
        super().__init__(size=size, wait=wait, idle_timeout=idle_timeout, name=name)
        self._connect, self._close = connect, close
        self._freed = asyncio.Condition()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[C]:
        """Lend a connection for one call; a failed or cancelled call discards it."""
        conn, generation = await self.acquire()
        try:
            yield conn
        except BaseException:
            # Cancelled mid-call, the connection may hold half an exchange: never reuse it.
            await self.release(conn, generation, broken=True)
            raise
        await self.release(conn, generation)

    async def acquire(self) -> tuple[C, int]:
        stale: list[C] = []
        deadline: float | None = None
        while True:
            claimed, conn, generation = self._claim(stale)
            if claimed:
                break
            deadline = self._deadline(deadline)
            async with self._freed:
                try:
                    await asyncio.wait_for(self._freed.wait(), deadline - time.monotonic())
                except TimeoutError:
                    pass
        await self._close_all(stale)
        if conn is None:
            try:
                conn = await self._connect()
            except BaseException:
                self._busy -= 1
                await self._notify()
                raise
            self.stats.opened += 1
        return conn, generation

    async def release(self, conn: C, generation: int, *, broken: bool = False) -> None:
        self._busy -= 1
        keep = not broken and generation == self._generation
        if keep:
            self._idle.items.append((conn, time.monotonic()))
        else:
            await self._close_all([conn])
        await self._notify()

    async def _notify(self) -> None:
        async with self._freed:
            self._freed.notify()

    async def aclose(self) -> None:
        """Close the idle connections; those lent out now are closed when they come back."""
        await self._close_all(self.detach())

    def detach(self) -> list[C]:
        """Forget the idle connections and return them, for an owner to close without the loop.

        Its loop closed (``asyncio.run`` and ``async_to_sync`` end theirs), this pool can never
        run ``aclose``; the owner closes the connections' sockets itself. Call it from the
        loop's thread, or once the loop no longer runs.
        """
        idle = [conn for conn, _ in self._idle.items]
        self._idle.items = []
        self._generation += 1
        return idle

    async def _close_all(self, conns: list[C]) -> None:
        for conn in conns:
            self.stats.closed += 1
            try:
                await asyncio.shield(self._close(conn))
            except Exception:
                pass


class PerLoop(Generic[T]):
    """One ``T`` per running event loop; those of closed loops are dropped.

    ``asyncio.run()`` and ``async_to_sync`` end their loops; an object bound to such a loop
    can never be used again. Not a WeakKeyDictionary: a connection refers to its loop through
    its transport, so the key would never die.
    """

    def __init__(self, make: Callable[[], T], drop: Callable[[T], None] | None = None) -> None:
        self._make = make
        self._drop = drop  # given each object of a closed loop (its connections stay open)
        self._items: dict[asyncio.AbstractEventLoop, T] = {}
        self._mutex = threading.Lock()

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is None:
            self.sweep()
            with self._mutex:
                item = self._items.setdefault(loop, self._make())
        return item

    def sweep(self) -> int:
        """Forget the objects of closed loops, handing each to ``drop``; return how many."""
        with self._mutex:
            closed = [loop for loop in self._items if loop.is_closed()]
            dropped = [self._items.pop(loop) for loop in closed]
        if self._drop is not None:
            for item in dropped:
                try:
                    self._drop(item)
                except Exception:  # a socket that fails to close is gone either way
                    pass
        return len(dropped)

    def items(self) -> list[tuple[asyncio.AbstractEventLoop, T]]:
        with self._mutex:
            return list(self._items.items())

    def clear(self) -> list[tuple[asyncio.AbstractEventLoop, T]]:
        """Forget every loop's object and return them (their owner closes them)."""
        with self._mutex:
            items, self._items = list(self._items.items()), {}
        return items
