"""The sans-IO protocol: round trips, framing, limits and garbage, without any socket."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from django_statemodes.stateserver import protocol as p

keys = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=255
)
payloads = st.binary(max_size=2048)
lock_ids = st.integers(min_value=0, max_value=(1 << 64) - 2)
u32 = st.integers(min_value=0, max_value=(1 << 32) - 1)
rids = st.integers(min_value=1, max_value=(1 << 32) - 1)

user_ids = st.text(min_size=1, max_size=63)  # at most 252 bytes of UTF-8
ips = st.none() | st.text(max_size=60)
agents = st.none() | st.text(max_size=500)
times = st.floats(0, 1e10, allow_nan=False)
entries = st.builds(
    p.SessionEntry, keys, st.just("") | user_ids, times, times, times, times,
    st.integers(0, (1 << 32) - 2), st.booleans(), ips, agents,
)  # fmt: skip

requests = st.one_of(
    st.builds(p.Get, rids, keys),
    st.builds(p.GetExclusive, rids, keys),
    st.builds(
        p.SetAndRelease, rids, keys, st.none() | payloads, st.none() | lock_ids, u32,
        st.booleans(), st.booleans(),
    ),
    st.builds(p.Release, rids, keys, lock_ids),
    st.builds(p.Remove, rids, keys, st.none() | lock_ids),
    st.builds(p.ResetTimeout, rids, keys),
    st.builds(p.CreateUninitialized, rids, keys, u32),
    st.builds(p.PurgeExpired, rids, st.booleans(), st.booleans()),
    st.builds(p.Wait, rids, keys, lock_ids, st.integers(0, 10**6).map(lambda ms: ms / 1000)),
    st.builds(p.Ping, rids, payloads),
    st.builds(p.Stats, rids),
    st.builds(p.Purge, rids),
    # Version 2: the index of sessions by user.
    st.builds(
        lambda rid, key, user, ip, agent, times: p.BindUser(rid, key, user, ip, agent, *times),
        rids, keys, user_ids, ips, agents,
        st.tuples(st.none(), st.none()) | st.tuples(times, times),
    ),
    st.builds(p.TouchUser, rids, keys, ips, agents),
    st.builds(p.UnbindUser, rids, keys),
    st.builds(p.SessionInfoRequest, rids, keys),
    st.builds(p.ListSessions, rids, st.none() | user_ids, u32, st.integers(0, p.MAX_SESSIONS_PAGE)),
)  # fmt: skip
replies = st.one_of(
    st.builds(
        p.Item, rids, st.none() | payloads, st.booleans(), lock_ids,
        st.floats(0, 1e6, allow_nan=False), u32, st.booleans(),
    ),
    st.builds(p.NotFound, rids),
    st.builds(p.Result, rids, st.integers(0, (1 << 64) - 1)),
    st.builds(p.ExpiredBatch, rids, st.lists(st.tuples(keys, st.none() | payloads), max_size=5).map(tuple)),
    st.builds(p.Released, rids, st.booleans()),
    st.builds(p.Pong, rids, payloads),
    st.builds(p.StatsReply, rids, st.dictionaries(st.text(max_size=8), st.integers(), max_size=4)),
    st.builds(p.Error, rids, st.sampled_from(list(p.ErrorCode)), st.text(max_size=50)),
    st.builds(p.Sessions, rids, st.integers(0, (1 << 64) - 1), st.lists(entries, max_size=4).map(tuple)),
)  # fmt: skip


def pair() -> tuple[p.Connection, p.Connection]:
    """A client and a server past the handshake, wired to each other by hand."""
    client, server = p.Connection(p.CLIENT), p.Connection(p.SERVER)
    client.receive_data(server.send(p.Welcome(nonce=b"n" * 16)))
    assert isinstance(client.next_event(), p.Welcome)
    server.receive_data(client.send(p.Hello(application="app", client_nonce=b"c" * 16)))
    assert server.next_event() == p.Hello(application="app", client_nonce=b"c" * 16)
    client.receive_data(server.send(p.Ready()))
    assert client.next_event() == p.Ready()
    return client, server


def feed_in_chunks(conn: p.Connection, data: bytes, cuts: list[int]) -> list[p.Event]:
    events: list[p.Event] = []
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, end in zip(edges, edges[1:], strict=False):
        conn.receive_data(data[start:end])
        while (event := conn.next_event()) is not p.NEED_DATA:
            assert isinstance(event, p.Event)
            events.append(event)
    return events


@settings(max_examples=300)
@given(st.lists(requests, min_size=1, max_size=5), st.lists(st.integers(0, 10**5), max_size=8))
def test_requests_survive_any_split_of_the_byte_stream(
    events: list[p.Event], cuts: list[int]
) -> None:
    client, server = pair()
    wire = b"".join(client.send(event) for event in events)
    assert feed_in_chunks(server, wire, cuts) == events


@settings(max_examples=300)
@given(st.lists(replies, min_size=1, max_size=5), st.lists(st.integers(0, 10**5), max_size=8))
def test_replies_survive_any_split_of_the_byte_stream(
    events: list[p.Event], cuts: list[int]
) -> None:
    client, server = pair()
    wire = b"".join(server.send(event) for event in events)
    assert feed_in_chunks(client, wire, cuts) == events


@settings(max_examples=500)
@given(st.binary(min_size=1, max_size=4096), st.booleans())
def test_garbage_gives_events_need_data_or_a_remote_protocol_error(
    garbage: bytes, ready: bool
) -> None:
    server = pair()[1] if ready else p.Connection(p.SERVER)
    server.receive_data(garbage)
    try:
        for _ in range(len(garbage) + 2):
            event = server.next_event()
            if event is p.NEED_DATA:
                break
            assert isinstance(event, p.Event)
    except p.RemoteProtocolError as exc:
        assert isinstance(exc.code, p.ErrorCode)
        with pytest.raises(p.RemoteProtocolError):  # broken for good
            server.next_event()
    assert server.buffered <= len(garbage)


@given(st.binary(min_size=1, max_size=64))
def test_a_frame_cut_by_end_of_file_is_a_remote_protocol_error(tail: bytes) -> None:
    client, server = pair()
    frame = client.send(p.SetAndRelease(1, "k", tail, None, 60))
    server.receive_data(frame[:-1])
    assert server.next_event() is p.NEED_DATA
    server.receive_data(b"")
    with pytest.raises(p.RemoteProtocolError, match="middle of a frame"):
        server.next_event()


def test_a_clean_end_of_file_is_closed() -> None:
    server = pair()[1]
    server.receive_data(b"")
    assert server.next_event() is p.CLOSED


def test_an_oversized_frame_is_refused_from_its_header_alone() -> None:
    server = p.Connection(p.SERVER, max_frame_size=1024)
    server.receive_data(struct.pack("!I", 1025))  # no body sent, nothing buffered beyond 4 bytes
    with pytest.raises(p.RemoteProtocolError) as info:
        server.next_event()
    assert info.value.code == p.ErrorCode.FRAME_TOO_LARGE


def test_sending_an_oversized_frame_is_a_local_protocol_error() -> None:
    client = pair()[0]
    client.max_frame_size = 100
    with pytest.raises(p.LocalProtocolError, match="over the limit"):
        client.send(p.SetAndRelease(1, "key", b"x" * 200, None, 60))


def test_requests_before_hello_are_refused() -> None:
    client, _ = pair()
    fresh = p.Connection(p.SERVER)
    fresh.send(p.Welcome())
    fresh.receive_data(client.send(p.Get(1, "k")))
    with pytest.raises(p.RemoteProtocolError) as info:
        fresh.next_event()
    assert info.value.code == p.ErrorCode.NOT_READY


def test_a_client_cannot_send_requests_before_hello_nor_replies_ever() -> None:
    client = p.Connection(p.CLIENT)
    with pytest.raises(p.LocalProtocolError):
        client.send(p.Get(1, "k"))
    client.receive_data(p.Connection(p.SERVER).send(p.Welcome()))
    client.next_event()
    with pytest.raises(p.LocalProtocolError):
        client.send(p.Result(1, 1))


def test_unknown_frame_types_are_refused_with_their_code() -> None:
    server = pair()[1]
    server.receive_data(struct.pack("!IBI", 5, 0x55, 1))
    with pytest.raises(p.RemoteProtocolError) as info:
        server.next_event()
    assert info.value.code == p.ErrorCode.UNKNOWN_TYPE


def test_index_strings_the_wire_cannot_carry_are_refused_locally() -> None:
    client, _ = pair()
    with pytest.raises(p.LocalProtocolError, match="user id of 256 bytes"):
        client.send(p.BindUser(1, "k", "x" * 256))
    with pytest.raises(p.LocalProtocolError, match="non-empty"):
        client.send(p.ListSessions(1, ""))
    with pytest.raises(p.LocalProtocolError, match="user agent"):
        client.send(p.TouchUser(1, "k", None, "u" * 5000))


def test_malformed_index_frames_are_remote_protocol_errors() -> None:
    bodies = {
        p.BindUser.TYPE: b"\x01k\x05ab",  # the user id runs past the frame
        p.TouchUser.TYPE: b"\x01k\x08\x00\x00\x00",  # unknown client flag
        p.ListSessions.TYPE: b"\x02\x00\x00\x00\x00\x00\x01",  # unknown flag
        p.SessionInfoRequest.TYPE: b"\x01kk",  # trailing bytes
    }
    for type_, body in bodies.items():
        _, server = pair()
        server.receive_data(struct.pack("!IBI", 5 + len(body), type_, 1) + body)
        with pytest.raises(p.RemoteProtocolError):
            server.next_event()


def test_keys_the_wire_cannot_carry_are_refused_locally() -> None:
    client = pair()[0]
    for key in ("", "k" * 256, "clé"):
        with pytest.raises((p.LocalProtocolError, UnicodeEncodeError)):
            client.send(p.Get(1, key))


def test_the_secret_proofs_depend_on_every_input() -> None:
    proof = p.client_proof(b"s", b"n" * 16, b"c" * 16, "app")
    assert proof != p.client_proof(b"t", b"n" * 16, b"c" * 16, "app")
    assert proof != p.client_proof(b"s", b"m" * 16, b"c" * 16, "app")
    assert proof != p.client_proof(b"s", b"n" * 16, b"c" * 16, "other")
    assert proof != p.server_proof(b"s", b"n" * 16, b"c" * 16)


def test_the_protocol_module_does_no_io_and_knows_no_django() -> None:
    source = Path(p.__file__).read_text()
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert not imported & {"socket", "asyncio", "django", "selectors", "ssl"}


DOC = Path(__file__).resolve().parent.parent / "docs" / "stateserver-protocol.md"


def test_the_protocol_page_lists_every_frame_type_and_error_code() -> None:
    page = DOC.read_text()
    events: list[type[p.Event]] = [*p._REQUEST_TYPES, *p._REPLY_TYPES, p.Welcome, p.Hello, p.Ready]
    for event in events:
        assert f"`0x{event.TYPE:02X}`" in page, event.__name__
    for code in p.ErrorCode:
        assert f"| {code.value} | `{code.name}` |" in page


def test_the_protocol_page_example_matches_the_bytes_sent() -> None:
    page = DOC.read_text()
    server, client = p.Connection(p.SERVER), p.Connection(p.CLIENT)
    welcome = server.send(p.Welcome(nonce=b"n" * 16))
    client.receive_data(welcome)
    client.next_event()
    hello = client.send(p.Hello(1, "app", b"c" * 16, b""))
    server.receive_data(hello)
    server.next_event()
    frames = [
        welcome,
        hello,
        server.send(p.Ready()),
        client.send(p.GetExclusive(1, "abc")),
        server.send(p.Item(1, b"data", False, 5, 0.0, 1200, False)),
    ]
    for frame in frames:
        head = f"{frame[:4].hex()} {frame[4:5].hex()} {frame[5:9].hex()}"
        assert head in page, head
    assert "03 616263" in page and "000004b0 64617461" in page


def test_the_receive_buffer_is_bounded_even_if_events_are_not_drained() -> None:
    client, server = pair()
    server.max_buffer_size = 10_000
    frame = client.send(p.Ping(1, b"x" * 900))
    for _ in range(20):
        server.receive_data(frame)
    assert server.buffered <= 10_000
    with pytest.raises(p.RemoteProtocolError, match="not consumed"):
        while server.next_event() is not p.NEED_DATA:
            pass


def test_before_hello_a_server_takes_only_a_hello_sized_frame() -> None:
    # An unauthenticated connection used to be able to hold an almost complete 8 MiB frame.
    server = p.Connection(p.SERVER)
    server.send(p.Welcome())
    server.receive_data(struct.pack("!I", p.MAX_HELLO_FRAME_SIZE + 1))
    with pytest.raises(p.RemoteProtocolError, match="before the handshake") as info:
        server.next_event()
    assert info.value.code == p.ErrorCode.FRAME_TOO_LARGE


def test_the_longest_hello_fits_and_the_full_limit_applies_after_it() -> None:
    client, server = p.Connection(p.CLIENT), p.Connection(p.SERVER)
    client.receive_data(server.send(p.Welcome(nonce=b"n" * 16)))
    client.next_event()
    hello = p.Hello(application="a" * p.MAX_APPLICATION_LENGTH, proof=b"p" * 255)
    frame = client.send(hello)
    assert len(frame) == p.MAX_HELLO_FRAME_SIZE + 4  # the limit is exactly the longest HELLO
    big = client.send(p.Ping(1, b"x" * 1_000_000))  # pipelined right behind HELLO
    server.receive_data(frame + big)
    assert server.next_event() == hello
    assert server.next_event() == p.Ping(1, b"x" * 1_000_000)
