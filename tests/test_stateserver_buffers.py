"""What the state server holds for connections, under ``--max-memory`` and backpressure.

Redis counts client buffers in ``used_memory`` and bounds each client's output; here lock
waiters and connection buffers are charged to ``--max-memory``, a PURGE_EXPIRED with data is sent
in batches paced by the reader, and a WAIT's RELEASED waits for a paused connection to drain.
Each test runs a real server process and talks to it over raw sockets where a client would not.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from django_statemodes.exceptions import StateServerFull
from django_statemodes.memory import BATCH_ITEM_BYTES, MemoryStore
from django_statemodes.stateserver import protocol as p
from django_statemodes.stateserver.server import WAITER_OVERHEAD
from tests.fixtures_stateserver import StateServerProcess, client_for

pytestmark = [pytest.mark.stateserver]

MiB = 1024 * 1024


def handshaken(port: int) -> tuple[socket.socket, p.Connection]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = p.Connection(p.CLIENT, max_frame_size=16 * MiB)
    while (event := conn.next_event()) is p.NEED_DATA:
        conn.receive_data(sock.recv(4096))
    assert isinstance(event, p.Welcome)
    sock.sendall(conn.send(p.Hello(client_nonce=b"c" * 16)))
    while (event := conn.next_event()) is p.NEED_DATA:
        conn.receive_data(sock.recv(4096))
    assert isinstance(event, p.Ready)
    return sock, conn


def read_event(sock: socket.socket, conn: p.Connection) -> p.Event:
    while (event := conn.next_event()) is p.NEED_DATA:
        data = sock.recv(1 << 20)
        assert data, "the server closed the connection"
        conn.receive_data(data)
    assert isinstance(event, p.Event)
    return event


def wait_for(condition: Any, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_an_unfinished_frame_is_charged_to_max_memory_until_its_connection_goes() -> None:
    with StateServerProcess("--max-memory", "3M") as server:
        client = client_for(server)
        assert client.set_and_release("small", b"s", lock_id=None, timeout=600, new_item=True)
        base = client.stats()["bytes"]
        sock, conn = handshaken(server.port)
        frame = conn.send(p.SetAndRelease(1, "huge", b"z" * (5 * MiB // 2), None, 600))
        sock.sendall(frame[: 2 * MiB])  # never finished: held by the server meanwhile
        wait_for(lambda: client.stats()["bytes"] >= base + 2 * MiB, "the frame is charged")
        # 2 MiB held for a connection + 1 MiB more would pass 3M: refused, as Redis refuses
        # writes when client buffers fill maxmemory.
        with pytest.raises(StateServerFull):
            client.set_and_release("big", b"b" * MiB, lock_id=None, timeout=600, new_item=True)
        sock.close()
        wait_for(lambda: client.stats()["bytes"] == base, "the charge is given back")
        assert client.set_and_release("big", b"b" * MiB, lock_id=None, timeout=600, new_item=True)
        assert client.get("small") is not None


def test_lock_waiters_are_charged_and_refused_past_max_memory() -> None:
    with StateServerProcess("--max-memory", "64K") as server:
        client = client_for(server)
        assert client.set_and_release("locked", b"l", lock_id=None, timeout=600, new_item=True)
        item = client.get_exclusive("locked")
        assert item is not None and not item.locked
        base = client.stats()["bytes"]
        sock, conn = handshaken(server.port)
        sock.sendall(conn.send(p.Wait(7, "locked", item.lock_id, 30)))
        wait_for(lambda: client.stats()["waiters"] == 1, "the WAIT is queued")
        assert client.stats()["bytes"] == base + WAITER_OVERHEAD

        # Filled to the last few hundred bytes: a further WAIT (WAITER_OVERHEAD) cannot fit.
        filled = 0
        for size in (4096, 1024, 64, 1):
            for _ in range(100):  # bounded: 64K holds fewer than 100 of any of them
                try:
                    client.set_and_release(
                        f"f{filled}", b"x" * size, lock_id=None, timeout=600, new_item=True
                    )
                except StateServerFull:
                    break
                filled += 1
        other, other_conn = handshaken(server.port)
        other.sendall(other_conn.send(p.Wait(8, "locked", item.lock_id, 30)))
        refused = read_event(other, other_conn)
        assert isinstance(refused, p.Error) and refused.code == p.ErrorCode.STORE_FULL
        assert client.stats()["waiters"] == 1

        # The release wakes the queued waiter and gives its charge back.
        before = client.stats()["bytes"]
        client.release("locked", item.lock_id)
        released = read_event(sock, conn)
        assert isinstance(released, p.Released) and released.request_id == 7 and released.released
        assert client.stats()["bytes"] == before - WAITER_OVERHEAD
        sock.close()
        other.close()


def test_purge_expired_with_data_is_paced_by_its_reader() -> None:
    # 38 MiB of expired sessions: more than twice what the kernel's socket buffers can take
    # on loopback (a few MiB each side), so a purge that ignores its reader would empty the store.
    count, size = 1200, 32 * 1024
    with StateServerProcess("--purge-interval", "0") as server:
        client = client_for(server)
        for index in range(count):
            client.set_and_release(
                f"e{index:04d}", b"e" * size, lock_id=None, timeout=1, new_item=True
            )
        # A dry run counts the expired ones without touching them (a GET would slide them).
        wait_for(lambda: client.purge_expired(dry_run=True) == count, "the sessions expire")
        assert client.stats()["sessions"] == count  # expired, not yet swept

        # The kernel's default socket buffers: a tiny window would make the reading crawl.
        reader, conn = handshaken(server.port)
        reader.sendall(conn.send(p.PurgeExpired(9, True, False)))
        wait_for(lambda: client.stats()["sessions"] < count, "the purge starts")
        time.sleep(0.5)  # room to go on, had it ignored that nobody reads
        left = client.stats()["sessions"]
        # The first batches fill the buffers and the purge waits: most sessions are still
        # there, not all of them turned into replies in the server's memory at once.
        assert left >= count // 2, left
        assert client.ping(b"meanwhile") == b"meanwhile"

        keys: set[str] = set()
        for _ in range(count + 1):  # every part, then the RESULT
            event = read_event(reader, conn)
            if isinstance(event, p.Result):
                break
            assert isinstance(event, p.ExpiredBatch) and event.request_id == 9
            for key, data in event.items:
                assert data == b"e" * size
                keys.add(key)
        assert isinstance(event, p.Result) and event.value == count
        assert keys == {f"e{index:04d}" for index in range(count)}
        assert client.stats()["sessions"] == 0
        # The connection serves requests again after the RESULT.
        reader.sendall(conn.send(p.Ping(10, b"again")))
        assert read_event(reader, conn) == p.Pong(10, b"again")
        reader.close()


def test_a_released_for_a_paused_connection_is_delivered_when_it_drains() -> None:
    with StateServerProcess() as server:
        client = client_for(server)
        assert client.set_and_release("big", b"x" * MiB, lock_id=None, timeout=600, new_item=True)
        assert client.set_and_release("lock", b"l", lock_id=None, timeout=600, new_item=True)
        item = client.get_exclusive("lock")
        assert item is not None
        sock, conn = handshaken(server.port)
        # The WAIT first (queued), then GETs whose replies it does not read yet: 40 MiB, far
        # more than the kernel's socket buffers hold, so the server pauses the connection.
        gets = 40
        sock.sendall(
            conn.send(p.Wait(1, "lock", item.lock_id, 30))
            + b"".join(conn.send(p.Get(index + 2, "big")) for index in range(gets))
        )
        wait_for(lambda: client.stats()["waiters"] == 1, "the WAIT is queued")
        client.release("lock", item.lock_id)  # its RELEASED waits for the reader to drain
        assert client.ping(b"x") == b"x"

        replies: dict[int, p.Event] = {}
        for _ in range(gets + 1):
            event = read_event(sock, conn)
            replies[getattr(event, "request_id", 0)] = event
        assert replies[1] == p.Released(1, True)
        assert sorted(replies) == list(range(1, gets + 2))
        sock.close()


def test_purge_expired_in_batches_takes_about_batch_bytes_each_call() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    for index in range(10):
        store.set_and_release(f"k{index}", b"d" * 100, None, 60, new_item=True)
    for index in range(10):
        store.create_uninitialized(f"p{index}", 60)  # no payload: bounded by their count too
    now[0] = 120.0
    per_item = 100 + 2 + BATCH_ITEM_BYTES
    counts = []
    for _ in range(30):  # bounded; ends when a call finds nothing
        count = store.purge_expired(batch_bytes=2 * per_item)
        if not count:
            break
        counts.append(count)
    assert sum(counts) == 20 and len(store) == 0
    # Two 100-byte items reach the batch; then six empty placeholders (66 bytes each) do.
    assert counts[:5] == [2] * 5 and counts[5:] == [6, 4]
