"""The bounded connection pools: bound, LIFO reuse, idle and generation closes, exhaustion.

The pools are Django-free and generic in their connection type: here a connection is a real
socket pair (open until the pool closes it), so a leak shows as a socket left open.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from django_statemodes.exceptions import SessionPoolExhausted
from django_statemodes.providers.pool import AsyncPool, PerLoop, Pool

PATIENCE = 60.0


class Sockets:
    """Opens and closes socket pairs, remembering every one it opened."""

    def __init__(self) -> None:
        self.opened: list[socket.socket] = []
        self.fail = False

    def connect(self) -> socket.socket:
        if self.fail:
            raise ConnectionRefusedError("the store is down")
        one, other = socket.socketpair()
        other.close()
        self.opened.append(one)
        return one

    async def aconnect(self) -> socket.socket:
        return self.connect()

    @staticmethod
    def close(conn: socket.socket) -> None:
        conn.close()

    @staticmethod
    async def aclose(conn: socket.socket) -> None:
        conn.close()

    def open(self) -> list[socket.socket]:
        return [conn for conn in self.opened if conn.fileno() != -1]


def pool(
    sockets: Sockets, size: int = 2, wait: float = 0.1, idle: float = 60.0
) -> Pool[socket.socket]:
    return Pool(
        sockets.connect, sockets.close, size=size, wait=wait, idle_timeout=idle, name="a store"
    )


def apool(
    sockets: Sockets, size: int = 2, wait: float = 0.1, idle: float = 60.0
) -> AsyncPool[socket.socket]:
    return AsyncPool(
        sockets.aconnect, sockets.aclose, size=size, wait=wait, idle_timeout=idle, name="a store"
    )


def test_the_pool_opens_no_more_than_its_size_then_refuses() -> None:
    sockets = Sockets()
    connections = pool(sockets, size=2, wait=0.1)
    first, second = connections.acquire(), connections.acquire()
    with pytest.raises(SessionPoolExhausted) as raised:
        connections.acquire()
    assert "All 2 connections of this process to a store" in str(raised.value)
    assert raised.value.setting == "STATEMODES_MAX_CONNECTIONS"
    assert len(sockets.opened) == 2
    assert (connections.stats.waited, connections.stats.exhausted) == (1, 1)
    connections.release(*first)
    connections.release(*second)
    assert connections.stats.open == 2


def test_the_newest_idle_connection_is_lent_first() -> None:
    sockets = Sockets()
    connections = pool(sockets)
    older, newer = connections.acquire(), connections.acquire()
    connections.release(*older)
    connections.release(*newer)
    assert connections.acquire()[0] is newer[0]  # LIFO: the older one may age out


def test_a_waiting_caller_gets_the_connection_given_back() -> None:
    sockets = Sockets()
    connections = pool(sockets, size=1, wait=PATIENCE)
    held = connections.acquire()
    got: list[socket.socket] = []
    waiter = threading.Thread(target=lambda: got.append(connections.acquire()[0]))
    waiter.start()
    while connections.stats.waited == 0:  # bounded by the waiter's PATIENCE
        time.sleep(0.001)
    connections.release(*held)
    waiter.join(PATIENCE)
    assert got == [held[0]]
    assert len(sockets.opened) == 1 and connections.stats.exhausted == 0


def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    sockets = Sockets()
    connections = pool(sockets, size=3, idle=0.05)
    lent = [connections.acquire() for _ in range(3)]
    for one in lent:
        connections.release(*one)
    time.sleep(0.1)
    fresh, _ = connections.acquire()  # the stale ones are closed, a new one opened
    assert fresh not in [conn for conn, _ in lent]
    assert sockets.open() == [fresh]
    assert connections.stats.open == 1


def test_sweep_closes_idle_connections_without_a_caller() -> None:
    sockets = Sockets()
    connections = pool(sockets, size=2, idle=0.05)
    kept = connections.acquire()
    connections.release(*connections.acquire())
    time.sleep(0.1)
    assert connections.sweep() == 1
    assert sockets.open() == [kept[0]]  # a lent connection is never swept
    connections.release(*kept)
    assert connections.sweep() == 0  # just given back: not idle for long


def test_close_closes_idle_connections_now_and_lent_ones_when_given_back() -> None:
    sockets = Sockets()
    connections = pool(sockets)
    lent, idle = connections.acquire(), connections.acquire()
    connections.release(*idle)
    connections.close()
    assert sockets.open() == [lent[0]]
    connections.release(*lent)  # lent before close(): an older generation, not kept
    assert sockets.open() == []
    again, _ = connections.acquire()  # the pool still works, with new connections
    assert again not in (lent[0], idle[0])


def test_a_failed_call_discards_its_connection() -> None:
    sockets = Sockets()
    connections = pool(sockets)
    with pytest.raises(RuntimeError), connections.connection() as conn:
        raise RuntimeError("the call broke the connection")
    assert conn.fileno() == -1 and connections.stats.open == 0
    with connections.connection() as conn:
        pass
    assert sockets.open() == [conn]  # a call that succeeded gives it back open


def test_a_failed_connect_gives_its_place_back() -> None:
    sockets = Sockets()
    connections = pool(sockets, size=1)
    sockets.fail = True
    with pytest.raises(ConnectionRefusedError):
        connections.acquire()
    sockets.fail = False
    conn, generation = connections.acquire()  # not SessionPoolExhausted: the slot is free
    connections.release(conn, generation)


def test_threads_never_hold_more_than_the_bound() -> None:
    sockets = Sockets()
    connections = pool(sockets, size=3, wait=PATIENCE)
    most: list[int] = []
    mutex = threading.Lock()
    lent = 0

    def call() -> None:
        nonlocal lent
        for _ in range(20):
            with connections.connection():
                with mutex:
                    lent += 1
                    most.append(lent)
                time.sleep(0.0005)
                with mutex:
                    lent -= 1

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert max(most) <= 3 and len(sockets.opened) <= 3
    assert connections.stats.open == len(sockets.open()) <= 3


def test_the_async_pool_bounds_reuses_and_refuses() -> None:
    sockets = Sockets()

    async def scenario() -> None:
        connections = apool(sockets, size=2, wait=0.1)
        older, newer = await connections.acquire(), await connections.acquire()
        with pytest.raises(SessionPoolExhausted):
            await connections.acquire()
        await connections.release(*older)
        await connections.release(*newer)
        assert (await connections.acquire())[0] is newer[0]  # LIFO
        assert connections.stats.exhausted == 1 and len(sockets.opened) == 2

    asyncio.run(scenario())


def test_an_async_waiter_gets_the_connection_another_task_gives_back() -> None:
    sockets = Sockets()

    async def scenario() -> None:
        connections = apool(sockets, size=1, wait=PATIENCE)
        held = await connections.acquire()
        waiter = asyncio.ensure_future(connections.acquire())
        while connections.stats.waited == 0:
            await asyncio.sleep(0)
        await connections.release(*held)
        got, _ = await asyncio.wait_for(waiter, PATIENCE)
        assert got is held[0] and connections.stats.exhausted == 0

    asyncio.run(scenario())


def test_a_cancelled_async_call_discards_its_connection() -> None:
    sockets = Sockets()

    async def scenario() -> None:
        connections = apool(sockets)
        started = asyncio.Event()

        async def call() -> None:
            async with connections.connection():
                started.set()
                await asyncio.sleep(PATIENCE)

        task = asyncio.ensure_future(call())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sockets.open() == [] and connections.stats.open == 0

    asyncio.run(scenario())


def test_async_close_and_detach() -> None:
    sockets = Sockets()

    async def scenario() -> None:
        connections = apool(sockets, size=3, idle=0.05)
        lent = [await connections.acquire() for _ in range(3)]
        for one in lent[1:]:
            await connections.release(*one)
        await connections.aclose()
        assert sockets.open() == [lent[0][0]]
        await connections.release(*lent[0])  # an older generation: closed
        assert sockets.open() == []
        await connections.release(*await connections.acquire())
        detached = connections.detach()  # for an owner whose loop is gone
        assert len(detached) == 1 and detached[0].fileno() != -1

    asyncio.run(scenario())


def test_per_loop_keeps_one_object_per_loop_and_drops_closed_loops() -> None:
    dropped: list[object] = []
    per_loop: PerLoop[object] = PerLoop(object, drop=dropped.append)

    async def get() -> tuple[object, object]:
        return per_loop.get(), per_loop.get()

    first, same = asyncio.run(get())
    assert first is same  # one per loop
    assert [item for _, item in per_loop.items()] == [first]
    second, _ = asyncio.run(get())  # a new loop: the closed one's object is dropped
    assert second is not first
    assert dropped == [first]
    assert [item for _, item in per_loop.items()] == [second]
    assert per_loop.sweep() == 1 and dropped == [first, second]  # its loop closed too
    assert per_loop.items() == []


def test_per_loop_clear_hands_everything_to_the_owner() -> None:
    per_loop: PerLoop[object] = PerLoop(object)
    runner = asyncio.Runner()
    try:
        item = runner.run(_get(per_loop))
        assert [(loop.is_closed(), got) for loop, got in per_loop.clear()] == [(False, item)]
        assert per_loop.items() == []
    finally:
        runner.close()


async def _get(per_loop: PerLoop[object]) -> object:
    return per_loop.get()
