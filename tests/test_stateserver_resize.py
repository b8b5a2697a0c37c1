"""A farm that grows and shrinks loses no live session.

Step 1 of a change: STATEMODES_STATE_NEXT_CONNECTION (``upcoming=``); step 2:
STATEMODES_STATE_PREVIOUS_CONNECTION (``previous=``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_statemodes.providers.stateserver import StateServerProvider
from tests.farm import Browser, WebServer
from tests.fixtures_stateserver import StateServerProcess

pytestmark = [pytest.mark.stateserver]

KEYS = [f"resize-key-{index:04d}" for index in range(400)]


@pytest.fixture(scope="module")
def servers() -> Iterator[list[StateServerProcess]]:
    with (
        StateServerProcess() as a,
        StateServerProcess() as b,
        StateServerProcess() as c,
        StateServerProcess() as d,
    ):
        yield [a, b, c, d]


@pytest.fixture(autouse=True)
def empty(servers: list[StateServerProcess]) -> Iterator[None]:
    yield
    for server in servers:
        provider = StateServerProvider(connection=server.connection)
        provider.client("any").purge()
        provider.close()


def farm(*servers: StateServerProcess) -> str:
    return ";".join(server.connection for server in servers)


def holders(servers: list[StateServerProcess], key: str) -> list[int]:
    """The ports of the servers that hold ``key``."""
    found = []
    for server in servers:
        provider = StateServerProvider(connection=server.connection)
        if provider.get(key) is not None:
            found.append(server.port)
        provider.close()
    return found


def value(key: str) -> bytes:
    return f"value of {key}".encode()


def test_adding_then_removing_a_server_keeps_every_session_with_its_value(
    servers: list[StateServerProcess],
) -> None:
    a, b, c, d = servers
    three = StateServerProvider(connection=farm(a, b, c))
    for key in KEYS:
        assert three.set_and_release(key, value(key), lock_id=None, timeout=600, new_item=True)
    # Grow: the fourth server takes over about a quarter of the keys, which move on first use.
    four = StateServerProvider(connection=farm(a, b, c, d), previous=farm(a, b, c))
    moving = [key for key in KEYS if four.resolver.resolve(key) != three.resolver.resolve(key)]
    assert len(KEYS) // 8 < len(moving) < len(KEYS) // 2
    for key in KEYS:
        item = four.get_exclusive(key)
        assert item is not None and not item.locked and item.data == value(key), key
        assert four.set_and_release(key, item.data + b"+", lock_id=item.lock_id, timeout=600)
    assert four.moved == len(moving)
    for key in moving:
        assert holders(servers, key) == [d.port]  # moved, not copied
    # Shrink: b leaves; its sessions move to the others on first use, then it stops.
    shrunk = StateServerProvider(connection=farm(a, c, d), previous=farm(a, b, c, d))
    leaving = [key for key in KEYS if four.resolver.resolve(key).port == b.port]
    assert leaving
    for key in KEYS:
        item = shrunk.get_exclusive(key)
        assert item is not None and item.data == value(key) + b"+", key
        shrunk.release(key, item.lock_id)
    assert shrunk.moved == len(leaving)
    assert all(holders(servers, key) != [b.port] for key in KEYS)
    # After the change: the previous layout is forgotten and every session is where it belongs.
    final = StateServerProvider(connection=farm(a, c, d))
    assert [final.get(key).data for key in KEYS] == [value(k) + b"+" for k in KEYS]  # type: ignore[union-attr]
    for provider in (three, four, shrunk, final):
        provider.close()


def test_a_read_moves_the_session_too_unless_it_is_locked(
    servers: list[StateServerProcess],
) -> None:
    a, b, c, d = servers
    three = StateServerProvider(connection=farm(a, b, c))
    four = StateServerProvider(connection=farm(a, b, c, d), previous=farm(a, b, c))
    first, second = [k for k in KEYS if four.resolver.resolve(k).port == d.port][:2]
    for key in (first, second):
        assert three.set_and_release(key, b"v", lock_id=None, timeout=600, new_item=True)
    # A read moves it (a session only ever read must not stay behind), and leaves it unlocked.
    assert four.get(first).data == b"v"  # type: ignore[union-attr]
    assert holders(servers, first) == [d.port] and four.moved == 1
    assert not four.get(first).locked  # type: ignore[union-attr]
    # A locked one is read where it is: a read never waits for a lock.
    mine = three.get_exclusive(second)
    assert mine is not None and not mine.locked
    read = four.get(second)
    assert read is not None and read.data == b"v" and read.locked
    assert holders(servers, second) == [three.resolver.resolve(second).port]
    three.release(second, mine.lock_id)
    assert four.remove(second)  # a flush removes it wherever it is
    assert holders(servers, second) == []
    three.close()
    four.close()


def test_a_missing_session_is_created_nowhere(servers: list[StateServerProcess]) -> None:
    a, b, c, d = servers
    four = StateServerProvider(connection=farm(a, b, c, d), previous=farm(a, b, c))
    for key in KEYS[:50]:
        assert four.get_exclusive(key) is None
    assert all(holders(servers, key) == [] for key in KEYS[:50])
    four.close()


def test_a_lock_held_on_the_previous_owner_is_waited_for_there(
    servers: list[StateServerProcess],
) -> None:
    a, b, c, d = servers
    three = StateServerProvider(connection=farm(a, b, c))
    four = StateServerProvider(connection=farm(a, b, c, d), previous=farm(a, b, c))
    key = next(k for k in KEYS if four.resolver.resolve(k).port == d.port)
    assert three.set_and_release(key, b"1", lock_id=None, timeout=600, new_item=True)
    mine = three.get_exclusive(key)  # an old-layout web server holds the lock
    assert mine is not None and not mine.locked
    held = four.get_exclusive(key)
    assert held is not None and held.locked and held.lock_id == mine.lock_id
    released = threading.Event()

    def holder() -> None:
        released.wait(10)
        assert three.set_and_release(key, b"2", lock_id=mine.lock_id, timeout=600)

    thread = threading.Thread(target=holder)
    thread.start()
    released.set()
    four.wait_for_release(key, held.lock_id, 30)  # on the previous owner: woken by the save
    thread.join(10)
    item = four.get_exclusive(key)
    assert item is not None and not item.locked and item.data == b"2"
    assert holders(servers, key) == [d.port]
    three.close()
    four.close()


def test_web_servers_of_both_steps_incrementing_at_once_lose_no_update(
    servers: list[StateServerProcess],
) -> None:
    """Mid-change, web servers of both steps serve the same sessions; they move one way only."""
    a, b, c, d = servers
    three = StateServerProvider(connection=farm(a, b, c))
    keys = KEYS[:40]
    for key in keys:
        assert three.set_and_release(key, b"0", lock_id=None, timeout=600, new_item=True)
    # The one deployed already places keys on four servers and moves them there; the other one
    # still places them on three and uses a moved session where it is.
    new = StateServerProvider(connection=farm(a, b, c, d), previous=farm(a, b, c))
    old = StateServerProvider(connection=farm(a, b, c), upcoming=farm(a, b, c, d))
    threads, rounds = 8, 25
    errors: list[BaseException] = []
    lost: list[str] = []

    def increment(provider: StateServerProvider, key: str) -> None:
        item = provider.get_exclusive(key)
        for _ in range(200):
            if item is None or not item.locked:
                break
            provider.wait_for_release(key, item.lock_id, 10)
            item = provider.get_exclusive(key)
        if item is None:  # missed at every place it was looked for: a user logged out
            lost.append(key)
            return
        assert not item.locked, item
        count = int(item.data) + 1
        assert provider.set_and_release(key, str(count).encode(), lock_id=item.lock_id, timeout=600)

    def work(index: int) -> None:
        try:
            for turn in range(rounds):
                provider = new if (index + turn) % 2 else old
                for key in keys:
                    increment(provider, key)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not errors, errors[:3]
    assert lost == []
    moving = [key for key in keys if new.resolver.resolve(key) != three.resolver.resolve(key)]
    assert moving and new.moved == len(moving)  # each moved once, never back
    assert old.moved == 0
    for key in keys:
        assert int(new.get(key).data) == threads * rounds, key  # type: ignore[union-attr]
        assert holders(servers, key) == [new.resolver.resolve(key).port], key  # one copy
    for provider in (three, new, old):
        provider.close()


def test_a_web_server_of_the_first_step_uses_a_moved_session_where_it_is(
    servers: list[StateServerProcess],
) -> None:
    a, b, c, d = servers
    three = StateServerProvider(connection=farm(a, b, c))
    old = StateServerProvider(connection=farm(a, b, c), upcoming=farm(a, b, c, d))
    new = StateServerProvider(connection=farm(a, b, c, d), previous=farm(a, b, c))
    key = next(k for k in KEYS if new.resolver.resolve(k).port == d.port)
    assert three.set_and_release(key, b"1", lock_id=None, timeout=600, new_item=True)
    assert new.get(key).data == b"1"  # type: ignore[union-attr]
    assert holders(servers, key) == [d.port] and new.moved == 1
    # The first step's web server reads, locks and saves it on the new owner, where it stays.
    assert old.get(key).data == b"1"  # type: ignore[union-attr]
    item = old.get_exclusive(key)
    assert item is not None and not item.locked and item.data == b"1"
    assert old.set_and_release(key, b"2", lock_id=item.lock_id, timeout=600)
    assert old.moved == 0 and holders(servers, key) == [d.port]
    # A lock it holds there is waited for there by the second step's web server.
    mine = old.get_exclusive(key)
    assert mine is not None and not mine.locked
    held = new.get_exclusive(key)
    assert held is not None and held.locked and held.lock_id == mine.lock_id
    old.release(key, mine.lock_id)
    item = new.get_exclusive(key)
    assert item is not None and not item.locked and item.data == b"2"
    new.release(key, item.lock_id)
    # A key found nowhere is missing for both, and created nowhere.
    unknown = next(k for k in KEYS if k != key and new.resolver.resolve(k).port == d.port)
    assert old.get_exclusive(unknown) is None and new.get_exclusive(unknown) is None
    assert holders(servers, unknown) == []
    # New sessions of the first step are placed by the old layout, and moved like the others.
    assert old.set_and_release(unknown, b"n", lock_id=None, timeout=600, new_item=True)
    assert holders(servers, unknown) == [old.resolver.resolve(unknown).port]
    assert new.get(unknown).data == b"n"  # type: ignore[union-attr]
    assert holders(servers, unknown) == [d.port]
    assert old.remove(key)  # a flush removes it wherever it is
    assert holders(servers, key) == []
    for provider in (three, old, new):
        provider.close()


def test_the_two_steps_of_a_change_cannot_be_set_at_once() -> None:
    with pytest.raises(ImproperlyConfigured, match="E067"):
        StateServerProvider(
            connection="127.0.0.1:1", previous="127.0.0.1:2", upcoming="127.0.0.1:3"
        )


def test_the_async_path_moves_sessions_too(servers: list[StateServerProcess]) -> None:
    a, b, c, d = servers
    three = StateServerProvider(connection=farm(a, b, c))
    four = StateServerProvider(connection=farm(a, b, c, d), previous=farm(a, b, c))
    key = next(k for k in KEYS if four.resolver.resolve(k).port == d.port)
    assert three.set_and_release(key, b"async", lock_id=None, timeout=600, new_item=True)

    async def move() -> bytes:
        item = await four.aget_exclusive(key)
        assert item is not None and item.data == b"async" and not item.locked
        assert await four.aset_and_release(key, b"moved", lock_id=item.lock_id, timeout=600)
        found = await four.aget(key)
        assert found is not None
        return bytes(found.data)

    assert asyncio.run(move()) == b"moved"
    assert holders(servers, key) == [d.port]
    three.close()
    four.close()


# Through real web servers (gunicorn): the rolling procedure of docs/stateserver.md.


def _increment(user: Browser, port: int) -> int:
    for _attempt in range(40):
        status, body = user.get("/incr", port)
        # Past the session's share of a worker's threads, a waiter gets 503 + Retry-After at
        # once and sends the increment again.
        if status != 503 or "Too many requests" not in body:
            break
        time.sleep(0.05)
    assert status == 200, body
    return int(body.split()[0])


def _load(users: list[Browser], ports: tuple[int, int], rounds: int) -> None:
    """Two clients per user increment at once, each alternating between the two web servers."""
    errors: list[BaseException] = []

    def work(user: Browser, first: int) -> None:
        try:
            for turn in range(rounds):
                _increment(user, ports[(first + turn) % 2])
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(Browser(user.port, user.cookie), first))
        for user in users
        for first in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:3]


@pytest.mark.slow
def test_a_farm_grows_and_shrinks_under_load_through_gunicorn(
    servers: list[StateServerProcess],
) -> None:
    a, b, c, d = servers
    rounds = 6
    with WebServer(farm(a, b, c), threads=4) as web:
        users = [Browser(web.port) for _ in range(24)]
        expected = {}
        for index, user in enumerate(users):
            for _ in range(1 + index % 3):  # distinct values
                expected[index] = _increment(user, web.port)
    cookies = [user.cookie for user in users]
    # Grow to four servers. Step 1 (already rolled out here): the old layout, looking in the new
    # one too. Step 2, rolling: the new layout, looking in the old one; both serve meanwhile.
    old_side = WebServer(farm(a, b, c), threads=4, FARM_NEXT_CONNECTION=farm(a, b, c, d))
    new_side = WebServer(farm(a, b, c, d), threads=4, FARM_PREVIOUS_CONNECTION=farm(a, b, c))
    with old_side, new_side:
        _load(users, (old_side.port, new_side.port), rounds)
        # Step 3: every session is used once more by the new layout, which moves it there (in
        # production: wait SESSION_COOKIE_AGE before dropping the previous layout).
        for index, user in enumerate(users):
            assert user.counter("/count", new_side.port) == expected[index] + 2 * rounds
            expected[index] += 2 * rounds
    # Shrink: b leaves, by the same two steps; then every session is read once (it moves off b).
    old_side = WebServer(farm(a, b, c, d), threads=4, FARM_NEXT_CONNECTION=farm(a, c, d))
    new_side = WebServer(farm(a, c, d), threads=4, FARM_PREVIOUS_CONNECTION=farm(a, b, c, d))
    with old_side, new_side:
        _load(users, (old_side.port, new_side.port), rounds)
        for index, user in enumerate(users):
            assert _increment(user, new_side.port) == expected[index] + 2 * rounds + 1
            expected[index] += 2 * rounds + 1
    b.stop()
    try:
        with WebServer(farm(a, c, d)) as web:  # the change is over: no previous layout
            for index, user in enumerate(users):
                assert user.counter("/count", web.port) == expected[index]
        assert [user.cookie for user in users] == cookies  # no user ever got a fresh session
    finally:
        b.start()
