"""The state server's index of sessions by user, through real server processes.

Protocol versions both ways (an old client, an older server), per-application secrets, the
snapshot and the append-only log, hostile input under --max-memory, and a farm listing a user's
sessions with one request per server.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from django_statemodes.exceptions import StateServerFull, StateServerProtocolError
from django_statemodes.memory import Binding
from django_statemodes.providers.stateserver import StateServerProvider
from django_statemodes.stateserver import protocol as p
from django_statemodes.stateserver import snapshot
from django_statemodes.stateserver.addresses import Address
from django_statemodes.stateserver.client import AsyncStateServerClient, StateServerClient
from django_statemodes.stateserver.errors import SnapshotError
from tests.fixtures_stateserver import StateServerProcess, client_for

pytestmark = [pytest.mark.stateserver]


def new_key() -> str:
    return secrets.token_hex(16)


def stored(client: StateServerClient, data: bytes = b"x", timeout: int = 600) -> str:
    key = new_key()
    assert client.set_and_release(key, data, lock_id=None, timeout=timeout, new_item=True)
    return key


def operations(client: StateServerClient) -> int:
    return int(client.stats()["operations"])


@pytest.fixture(scope="module")
def server() -> Iterator[StateServerProcess]:
    with StateServerProcess() as process:
        yield process


def raw_exchange(port: int, version: int, requests: list[p.Request | bytes]) -> list[p.Event]:
    """Speak the protocol at ``version`` over a plain socket; return the replies in order.

    A request given as bytes is sent as it is (what our encoder would refuse to build).
    """
    conn = p.Connection(p.CLIENT)
    replies: list[p.Event] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:

        def read() -> p.Event:
            while True:
                event = conn.next_event()
                if event is p.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                    continue
                assert isinstance(event, p.Event), event
                return event

        welcome = read()
        assert isinstance(welcome, p.Welcome)
        sock.sendall(conn.send(p.Hello(version, "default", b"n" * p.NONCE_SIZE, b"")))
        assert isinstance(read(), p.Ready)
        for request in requests:
            sock.sendall(request if isinstance(request, bytes) else conn.send(request))
            replies.append(read())
    return replies


def test_a_version_1_client_keeps_working_and_cannot_reach_version_2_requests(
    server: StateServerProcess,
) -> None:
    key = new_key()
    replies = raw_exchange(
        server.port,
        1,
        [
            p.SetAndRelease(1, key, b"old", None, 60, True, True),
            p.Get(2, key),
            p.BindUser(3, key, "alice"),
            p.Ping(4, b"still here"),
        ],
    )
    assert isinstance(replies[0], p.Result) and replies[0].value == 1
    assert isinstance(replies[1], p.Item) and replies[1].data == b"old"
    refused = replies[2]
    assert isinstance(refused, p.Error) and refused.request_id == 3
    assert refused.code == p.ErrorCode.UNSUPPORTED_VERSION
    assert "needs protocol version 2" in refused.message
    assert isinstance(replies[3], p.Pong)  # a request-level error: the connection goes on
    client = client_for(server)
    try:
        assert client.user_sessions("alice") == []  # nothing was bound
    finally:
        client.close()


def test_a_new_client_against_an_older_server_works_and_names_the_upgrade() -> None:
    with StateServerProcess("--protocol-version", "1") as old:
        client = client_for(old)
        try:
            key = stored(client)
            assert client.get(key) is not None  # everything else works on version 1
            before = operations(client)
            with pytest.raises(StateServerProtocolError) as info:
                client.bind_user(key, "alice")
            message = str(info.value)
            assert "speaks protocol version 1" in message
            assert "upgrade the state server" in message
            assert str(client.address) in message
            # Refused before sending: the server saw only the two STATS.
            assert operations(client) == before + 1
            provider = StateServerProvider(connection=old.connection, timeout=5)
            with pytest.raises(StateServerProtocolError, match="upgrade the state server"):
                provider.user_sessions("alice")

            async def through_asyncio() -> None:
                with pytest.raises(StateServerProtocolError, match="protocol version 1"):
                    await provider.abind_user(key, "alice", ip=None, user_agent=None)
                assert await provider.aget(key) is not None

            asyncio.run(through_asyncio())
            provider.close()
        finally:
            client.close()


def test_the_provider_binds_lists_and_ends_over_the_wire(server: StateServerProcess) -> None:
    provider = StateServerProvider(connection=server.connection, timeout=5)
    client = client_for(server)
    user = new_key()
    try:
        keys = [stored(client) for _ in range(3)]
        for key in keys:
            assert provider.bind_user(key, user, ip="192.0.2.0", user_agent="Firefox/1")
        assert {i.session_key for i in provider.user_sessions(user)} == set(keys)
        assert provider.remove(keys[0])
        assert {i.session_key for i in provider.user_sessions(user)} == set(keys[1:])
        page, total = provider.list_sessions(user_id=user, limit=1)
        assert total == 2 and len(page) == 1
    finally:
        client.close()
        provider.close()


def test_a_user_with_more_sessions_than_a_page_is_listed_whole(
    server: StateServerProcess,
) -> None:
    client = client_for(server)
    user = new_key()
    try:
        count = p.MAX_SESSIONS_PAGE + 5
        keys = {stored(client, b"") for _ in range(count)}
        for key in keys:
            assert client.bind_user(key, user)
        before = operations(client)
        assert {info.session_key for info in client.user_sessions(user)} == keys
        assert operations(client) == before + 1 + 2  # two LIST_SESSIONS pages, then STATS
        for key in keys:
            client.remove(key)
    finally:
        client.close()


def test_hostile_user_ids_and_client_strings(server: StateServerProcess) -> None:
    client = client_for(server)
    try:
        key = stored(client)
        before = operations(client)
        with pytest.raises(ValueError, match="255 bytes"):
            client.bind_user(key, "x" * 256)
        with pytest.raises(ValueError, match="non-empty"):
            client.bind_user(key, "")
        assert operations(client) == before + 1  # refused before any I/O
        # An empty user id sent anyway (another client) is a request-level BAD_REQUEST.
        body = bytes([len(key)]) + key.encode() + b"\x00" + b"\x00\x00\x00\x00"
        frame = struct.pack("!IBI", 5 + len(body), p.BindUser.TYPE, 7) + body
        (reply,) = raw_exchange(server.port, 2, [frame])
        assert isinstance(reply, p.Error) and reply.code == p.ErrorCode.BAD_REQUEST
        # Oversized client strings are cut, not refused: a long header never fails a login.
        assert client.bind_user(key, "é" * 127, ip="9" * 500, user_agent="U" * 100_000)
        (info,) = client.user_sessions("é" * 127)
        assert info.ip is not None and len(info.ip) == 45
        assert info.user_agent is not None and len(info.user_agent) == 512
        client.remove(key)
    finally:
        client.close()


def test_a_flood_of_bindings_is_refused_past_max_memory_and_memory_stays_bounded() -> None:
    limit = 2_000_000
    with StateServerProcess("--max-memory", str(limit)) as small:
        client = client_for(small)
        try:
            key = stored(client)
            assert client.bind_user(key, "flood", user_agent="U" * 512)
            refused = 0
            bound = 0
            # Each BIND_USER of another session charges ~1 KB (ITEM + binding); bounded loop.
            for _ in range(5000):
                try:
                    extra = stored(client, b"")
                    client.bind_user(extra, "flood", user_agent="U" * 512)
                    bound += 1
                except StateServerFull as exc:
                    assert "--max-memory" in str(exc)
                    refused += 1
                    break
            assert refused == 1 and bound > 0
            stats = client.stats()
            assert stats["bytes"] <= limit
            # Rebinding the same session does not grow the index, even on a full server.
            used = stats["bytes"]
            for _ in range(50):
                assert client.bind_user(key, "flood", user_agent="U" * 10)
            assert client.stats()["bytes"] <= used
        finally:
            client.close()


def test_app_secrets_confine_each_site_to_its_own_index(tmp_path: Path) -> None:
    shop, blog = b"shop-" + b"s" * 40, b"blog-" + b"b" * 40
    path = tmp_path / "app-secrets"
    path.write_text(f"shop:{shop.decode()}\nblog:{blog.decode()}\n")
    path.chmod(0o600)
    with StateServerProcess("--app-secrets", str(path)) as tenants:
        address = Address("127.0.0.1", tenants.port)
        shop_client = StateServerClient(address, timeout=5, application="shop", secret=shop)
        blog_client = StateServerClient(address, timeout=5, application="blog", secret=blog)
        try:
            key = stored(shop_client)
            assert shop_client.bind_user(key, "alice", ip="192.0.2.0")
            assert blog_client.user_sessions("alice") == []
            assert blog_client.list_sessions() == ([], 0)
            assert not blog_client.bind_user(key, "mallory")  # not its session
            assert not blog_client.unbind_user(key)
            (info,) = shop_client.user_sessions("alice")
            assert info.session_key == key and info.ip == "192.0.2.0"
            page, total = shop_client.list_sessions()
            assert total == 1 and page[0].user_id == "alice"
            # STATS counts the index per application, and a tenant sees its own only.
            assert shop_client.stats()["bound_sessions"] == 1
            assert shop_client.stats()["applications"]["shop"]["bound"] == 1
            assert blog_client.stats()["bound_sessions"] == 0
        finally:
            shop_client.close()
            blog_client.close()


@pytest.mark.parametrize("appendonly", [False, True], ids=["snapshot", "appendonly"])
def test_the_index_survives_a_restart(tmp_path: Path, appendonly: bool) -> None:
    snapshot = str(tmp_path / "sessions.snap")
    args = ["--snapshot", snapshot] + (["--appendonly"] if appendonly else [])
    with StateServerProcess(*args) as process:
        client = client_for(process)
        kept, unbound, removed = stored(client), stored(client), stored(client)
        for key in (kept, unbound, removed):
            assert client.bind_user(key, "alice", ip="192.0.2.0", user_agent="UA")
        assert client.touch_user(kept, user_agent="UA2")
        assert client.unbind_user(unbound)
        assert client.remove(removed)
        (before,) = client.user_sessions("alice")
        client.close()
        if appendonly:
            process.kill()  # no shutdown snapshot: the log alone keeps the index
        else:
            process.stop()
        process.start()
        client = client_for(process)
        try:
            (after,) = client.user_sessions("alice")
            assert after.session_key == kept
            assert (after.created, after.last_seen) == (before.created, before.last_seen)
            assert (after.ip, after.user_agent) == ("192.0.2.0", "UA2")
            assert client.get(unbound) is not None and client.get(removed) is None
            page, total = client.list_sessions()
            assert total == 2
            assert {i.session_key: i.user_id for i in page} == {kept: "alice", unbound: ""}
        finally:
            client.close()


def test_a_farm_lists_a_users_sessions_with_one_request_per_server() -> None:
    with StateServerProcess() as first, StateServerProcess() as second:
        connection = f"{first.connection};{second.connection}"
        provider = StateServerProvider(connection=connection, timeout=5)
        clients = [client_for(first), client_for(second)]
        user = new_key()
        try:
            keys: list[str] = []
            placed = {first.port: 0, second.port: 0}
            while min(placed.values()) < 2 and len(keys) < 64:  # both servers hold some
                key = new_key()
                assert provider.set_and_release(key, b"x", lock_id=None, timeout=600, new_item=True)
                assert provider.bind_user(key, user, ip=None, user_agent=None)
                placed[provider.resolver.resolve(key).port] += 1
                keys.append(key)
            assert min(placed.values()) >= 2
            # Unbound sessions elsewhere cost nothing: only the user's sessions are read.
            for client in clients:
                for _ in range(200):
                    stored(client)
            before = [operations(c) for c in clients]
            assert {i.session_key for i in provider.user_sessions(user)} == set(keys)
            assert [operations(c) for c in clients] == [n + 2 for n in before]  # LIST + STATS
            page, total = provider.list_sessions(user_id=user, offset=1, limit=len(keys))
            assert total == len(keys) and len(page) == len(keys) - 1
            everyone, grand = provider.list_sessions(limit=10)
            assert grand == sum(c.list_sessions(limit=0)[1] for c in clients)
            assert len(everyone) == 10
            # Sign out everywhere: each key is ended on its own server.
            for key in keys:
                assert provider.remove(key)
            assert provider.user_sessions(user) == []
        finally:
            for client in clients:
                client.close()
            provider.close()


def test_the_async_client_and_provider_share_the_wire_format(server: StateServerProcess) -> None:
    provider = StateServerProvider(connection=server.connection, timeout=5)
    client = client_for(server)
    user = new_key()
    key = stored(client)

    async def scenario() -> None:
        aclient = AsyncStateServerClient(Address("127.0.0.1", server.port), timeout=5)
        try:
            assert await aclient.bind_user(key, user, ip="192.0.2.0", user_agent="UA")
            assert await aclient.touch_user(key, user_agent="UA2")
            (info,) = await aclient.user_sessions(user)
            assert info.user_agent == "UA2"
            assert (await provider.alist_sessions(user_id=user))[1] == 1
            await provider.aunbind_user(key)
            assert await provider.auser_sessions(user) == []
        finally:
            await aclient.aclose()

    try:
        asyncio.run(scenario())
    finally:
        client.remove(key)
        client.close()
        provider.close()


def test_a_version_1_snapshot_is_read_and_a_cut_bindings_section_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.snap"
    record = snapshot.encode_record("default", "abc", b"data", 60, 30.0)
    path.write_bytes(snapshot.MAGIC + b"\x01" + record + struct.pack("!HQ", 0, 1))
    sessions, bindings = snapshot.read_snapshot_file(str(path))
    assert sessions == {"default": [("abc", b"data", 60, 30.0)]} and bindings == []
    binding = Binding("alice", 1.0, 2.0, "192.0.2.0", None)
    snapshot.write_snapshot(
        str(path), [("default", "abc", b"data", 60, 30.0)], [("default", "abc", binding)]
    )
    assert snapshot.read_snapshot_file(str(path))[1] == [("default", "abc", binding)]
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(SnapshotError, match="cut off"):
        snapshot.read_snapshot_file(str(path))


def test_a_session_moved_in_a_farm_change_keeps_its_binding(settings: Any) -> None:
    settings.STATEMODES_USER_INDEX = True
    with StateServerProcess() as first, StateServerProcess() as second:
        one = StateServerProvider(connection=first.connection, timeout=5)
        both = StateServerProvider(
            connection=f"{first.connection};{second.connection}",
            previous=first.connection,
            timeout=5,
        )
        user = new_key()
        try:
            keys = [new_key() for _ in range(24)]
            for key in keys:
                assert one.set_and_release(key, b"x", lock_id=None, timeout=600, new_item=True)
                assert one.bind_user(key, user, ip="192.0.2.0", user_agent="UA")
            before = {i.session_key: i for i in one.user_sessions(user)}
            moving = [k for k in keys if both.resolver.resolve(k).port == second.port]
            assert moving  # rendezvous hashing gives the new server about half
            for key in keys:
                item = both.get_exclusive(key)
                assert item is not None and not item.locked
                assert both.set_and_release(key, b"y", lock_id=item.lock_id, timeout=600)
            assert both.moved == len(moving)
            after = {i.session_key: i for i in both.user_sessions(user)}
            assert set(after) == set(keys)
            for key in moving:
                assert both.resolver.resolve(key).port == second.port
                carried, was = after[key], before[key]
                assert (carried.created, carried.last_seen) == (was.created, was.last_seen)
                assert (carried.ip, carried.user_agent) == ("192.0.2.0", "UA")
            assert {i.session_key for i in one.user_sessions(user)} == set(keys) - set(moving)
        finally:
            one.close()
            both.close()
