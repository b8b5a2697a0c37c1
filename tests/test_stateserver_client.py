"""The blocking and asyncio clients against a real server: wake-ups, reconnects, failures."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest

from django_statemodes.exceptions import StateServerUnavailable
from django_statemodes.stateserver import protocol as p
from django_statemodes.stateserver.addresses import Address
from django_statemodes.stateserver.client import AsyncStateServerClient, StateServerClient
from tests.fixtures_stateserver import StateServerProcess, stateserver  # noqa: F401

pytestmark = [pytest.mark.stateserver]


def address(server: StateServerProcess) -> Address:
    return Address("127.0.0.1", server.port)


def test_the_async_wait_wakes_at_the_release_not_at_its_timeout(
    stateserver: StateServerProcess,  # noqa: F811
) -> None:
    holder = StateServerClient(address(stateserver), timeout=5)
    holder.set_and_release("async-wait", b"v", lock_id=None, timeout=60, new_item=True)
    item = holder.get_exclusive("async-wait")
    assert item is not None
    timer = threading.Timer(0.3, holder.release, ("async-wait", item.lock_id))

    async def wait() -> tuple[bool, float]:
        client = AsyncStateServerClient(address(stateserver), timeout=5)
        try:
            started = time.monotonic()
            released = await client.wait("async-wait", item.lock_id, 30)
            return released, time.monotonic() - started
        finally:
            await client.aclose()

    timer.start()
    released, elapsed = asyncio.run(wait())
    assert released is True
    assert 0.2 < elapsed < 5  # woken by the release, long before the 30 s timeout


def test_async_operations_pipeline_over_one_connection(
    stateserver: StateServerProcess,  # noqa: F811
) -> None:
    async def scenario() -> list[bytes | None]:
        client = AsyncStateServerClient(address(stateserver), timeout=5)
        try:
            keys = [f"pipelined-{i}" for i in range(50)]
            await asyncio.gather(
                *(
                    client.set_and_release(k, k.encode(), lock_id=None, timeout=60, new_item=True)
                    for k in keys
                )
            )
            items = await asyncio.gather(*(client.get(k) for k in keys))
            assert len(client._links) == 1
            return [item.data if item else None for item in items]
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [f"pipelined-{i}".encode() for i in range(50)]


def test_both_clients_reconnect_by_themselves_after_a_server_restart() -> None:
    with StateServerProcess() as server:
        blocking = StateServerClient(address(server), timeout=2)
        assert blocking.ping(b"1") == b"1"

        async def ping_twice() -> list[bytes]:
            client = AsyncStateServerClient(address(server), timeout=2)
            try:
                first = await client.call(lambda rid: p.Ping(rid, b"a"))
                assert isinstance(first, p.Pong)
                await asyncio.to_thread(server.restart)
                second = await client.get("nothing-here")
                return [first.payload, b"none" if second is None else b"found"]
            finally:
                await client.aclose()

        assert asyncio.run(ping_twice()) == [b"a", b"none"]
        assert blocking.ping(b"2") == b"2"  # the kept connection was dead: one reconnect


def test_a_dead_server_raises_unavailable_naming_the_address_and_setting() -> None:
    server = StateServerProcess()  # never started: nothing listens on its port
    client = StateServerClient(address(server), timeout=2)
    started = time.monotonic()
    with pytest.raises(StateServerUnavailable) as info:
        client.get("anything")
    assert time.monotonic() - started < 2
    message = str(info.value)
    assert f"127.0.0.1:{server.port}" in message
    assert "STATEMODES_STATE_CONNECTION" in message
    assert info.value.setting == "STATEMODES_STATE_CONNECTION"

    async def async_get() -> None:
        await AsyncStateServerClient(address(server), timeout=2).get("anything")

    with pytest.raises(StateServerUnavailable, match=str(server.port)):
        asyncio.run(async_get())


def test_links_of_finished_event_loops_are_dropped(stateserver: StateServerProcess) -> None:  # noqa: F811
    client = AsyncStateServerClient(address(stateserver), timeout=5)
    for _ in range(5):
        asyncio.run(client.get("loop-sweep"))
    assert len(client._links) == 1  # only the last loop's link is left


def test_a_wait_may_outlast_the_network_timeout_which_then_applies_again() -> None:
    with StateServerProcess() as server:
        holder = StateServerClient(address(server), timeout=5)
        holder.set_and_release("long-wait", b"v", lock_id=None, timeout=60, new_item=True)
        item = holder.get_exclusive("long-wait")
        assert item is not None
        client = StateServerClient(address(server), timeout=0.5)
        started = time.monotonic()
        assert client.wait("long-wait", item.lock_id, 1.2) is False  # the server's own timeout
        assert 1.1 < time.monotonic() - started < 3
        assert client.ping(b"still usable") == b"still usable"
        # The same connection, to a server that no longer answers: 0.5 s is in force again.
        server.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StateServerUnavailable, match=r"no answer within 0.5 s"):
                client.ping()
            assert time.monotonic() - started < 2.5
        finally:
            server.signal(signal.SIGCONT)
