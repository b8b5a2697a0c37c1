"""The state server's blocking client on a bounded pool, and the asyncio client's shared WAITs."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from django_statemodes.exceptions import SessionPoolExhausted
from django_statemodes.providers.stateserver import StateServerProvider
from django_statemodes.stateserver.addresses import Address
from django_statemodes.stateserver.client import AsyncStateServerClient, StateServerClient
from django_statemodes.testing import new_key
from tests.fixtures_stateserver import StateServerProcess

pytestmark = [pytest.mark.stateserver]

BOUND = 4
LONG = 60.0


def address(server: StateServerProcess) -> Address:
    return Address("127.0.0.1", server.port)


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def locked_key(client: StateServerClient) -> tuple[str, int]:
    """A new session, locked by ``client``: (its key, the lock id)."""
    key = new_key()
    assert client.set_and_release(key, b"v", lock_id=None, timeout=60, new_item=True)
    item = client.get_exclusive(key)
    assert item is not None and not item.locked
    return key, item.lock_id


def test_two_hundred_cycles_from_new_threads_stay_within_the_bound(
    stateserver: StateServerProcess, settings: Any
) -> None:
    settings.STATEMODES_MAX_CONNECTIONS = BOUND
    provider = StateServerProvider(connection=stateserver.connection, timeout=5)
    observer = StateServerClient(address(stateserver), timeout=5)  # one connection of its own
    baseline = observer.stats()["connections"]
    errors: list[BaseException] = []
    most = 0

    def cycle() -> None:
        try:
            key = new_key()
            assert provider.set_and_release(key, b"1", lock_id=None, timeout=60, new_item=True)
            item = provider.get_exclusive(key)
            assert item is not None and not item.locked
            assert provider.set_and_release(key, b"2", lock_id=item.lock_id, timeout=60)
            assert provider.remove(key)
        except BaseException as exc:
            errors.append(exc)

    try:
        for _ in range(20):  # 20 rounds of 10 new threads at once: 200 cycles
            threads = [threading.Thread(target=cycle) for _ in range(10)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(LONG)
            most = max(most, observer.stats()["connections"] - baseline)
        assert not errors, errors
        # At most the bound, however many threads ever called: not one per thread.
        assert 1 <= most <= BOUND
        client = provider.client(new_key())
        assert client.pool_stats.opened <= BOUND
    finally:
        provider.close()
        observer.close()


def test_waits_leave_a_connection_free_and_a_busy_pool_raises_session_pool_exhausted(
    stateserver: StateServerProcess,
) -> None:
    holder = StateServerClient(address(stateserver), timeout=5)
    client = StateServerClient(address(stateserver), timeout=5, pool_size=2, pool_wait=0.2)
    key, lock_id = locked_key(holder)
    results: list[bool] = []
    waiting = threading.Thread(target=lambda: results.append(client.wait(key, lock_id, LONG)))
    waiting.start()
    try:
        # The WAIT holds one connection for its wait...
        wait_until(lambda: client.pool.in_use == 1, "the WAIT never started")
        # ...and waits may hold all but one: a second waiter takes none, and comes back at once
        # (False: look at the lock again), so a lock's holder always finds a connection.
        assert client.wait(key, lock_id, LONG) is False
        assert client.ping(b"free") == b"free"
        assert client.pool_stats.opened == 2
        with client.pool.connection(), pytest.raises(SessionPoolExhausted) as caught:
            client.ping(b"x")  # the last connection is busy
        assert caught.value.setting == "STATEMODES_MAX_CONNECTIONS"
        assert client.pool_stats.exhausted == 1
    finally:
        holder.release(key, lock_id)
        waiting.join(LONG)
    assert results == [True]
    assert client.ping(b"y") == b"y"  # the connections came back to the pool
    assert client.pool_stats.opened == 2
    client.close()
    holder.close()


def test_an_exhausted_pool_is_a_503_with_retry_after(
    stateserver: StateServerProcess, settings: Any
) -> None:
    from django_statemodes.backends.stateserver import SessionStore

    settings.SESSION_ENGINE = "django_statemodes.backends.stateserver"
    settings.STATEMODES_STATE_CONNECTION = stateserver.connection
    settings.STATEMODES_STATE_NETWORK_TIMEOUT = 5
    settings.STATEMODES_MAX_CONNECTIONS = 2
    settings.STATEMODES_CONNECTION_WAIT = 0.2
    provider = SessionStore.get_provider()
    assert isinstance(provider, StateServerProvider)
    holder = StateServerClient(address(stateserver), timeout=5)
    key, lock_id = locked_key(holder)
    site = Client()
    response = site.get("/increment/")
    assert response.status_code == 200
    # A waiter in this process holds one of the provider's two connections, a call the other.
    waiting = threading.Thread(target=provider.wait_for_release, args=(key, lock_id, LONG))
    waiting.start()
    try:
        pool = provider.client(key).pool
        wait_until(lambda: pool.in_use == 1, "no WAIT")
        with pool.connection():
            response = site.get("/increment/")
        assert response.status_code == 503
        assert response["Retry-After"]
    finally:
        holder.release(key, lock_id)
        waiting.join(LONG)
    response = site.get("/increment/")
    assert response.status_code == 200 and response.json() == {"counter": 2}
    holder.close()


def test_a_forked_child_opens_its_own_connection_and_the_parent_keeps_its_own(
    stateserver: StateServerProcess,
) -> None:
    client = StateServerClient(address(stateserver), timeout=5)
    assert client.ping(b"parent") == b"parent"  # an idle connection in the pool at the fork
    pid = os.fork()
    if pid == 0:  # the child: the parent's socket must never carry its requests
        code = 1
        try:
            if client.ping(b"child") == b"child" and client.pool_stats.opened == 1:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.ping(b"again") == b"again"  # the parent's own connection, still in step
    assert client.pool_stats.opened == 1
    client.close()


def test_async_waits_for_one_lock_on_one_connection_share_one_wait_and_all_wake(
    stateserver: StateServerProcess,
) -> None:
    holder = StateServerClient(address(stateserver), timeout=5)
    key, lock_id = locked_key(holder)

    async def scenario() -> list[bool]:
        client = AsyncStateServerClient(address(stateserver), timeout=5)
        try:
            assert await client.ping(b"x") == b"x"  # this loop's one pipelined connection
            waits = [asyncio.create_task(client.wait(key, lock_id, LONG)) for _ in range(3)]
            loop = asyncio.get_running_loop()
            deadline = time.monotonic() + 30
            while key not in client._waits.get(loop, {}):
                assert time.monotonic() < deadline, "the WAIT was never sent"
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # each waiter has joined the shared WAIT by now
            assert all(not wait.done() for wait in waits)  # not ended by each other
            # A waiter that saw another lock id returns at once: one of the two ids is stale.
            assert await client.wait(key, lock_id - 1, LONG) is True
            # One that gives up early leaves the shared WAIT to the others.
            assert await client.wait(key, lock_id, 0.05) is False
            await loop.run_in_executor(None, holder.release, key, lock_id)
            return list(await asyncio.wait_for(asyncio.gather(*waits), LONG))
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [True, True, True]
    holder.close()


def test_an_ended_event_loop_leaves_no_connection_behind(
    stateserver: StateServerProcess,
) -> None:
    observer = StateServerClient(address(stateserver), timeout=5)
    baseline = observer.stats()["connections"]
    client = AsyncStateServerClient(address(stateserver), timeout=5)
    for _ in range(20):  # asyncio.run: a new loop each time, as async_to_sync makes
        assert asyncio.run(client.ping(b"x")) == b"x"
        # asyncio.run cancels the link's reader task, which closes the link.
        wait_until(
            lambda: observer.stats()["connections"] == baseline,
            "the link of an ended loop stayed open",
        )
    observer.close()
