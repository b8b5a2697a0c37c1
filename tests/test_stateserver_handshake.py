"""The handshake over real sockets: protocol versions, and a secret proven without sending it.

The server side runs against the real state server. The client side needs a server that says
what ours never would (other versions, a proof of another secret, a replayed proof), so
``ScriptedServer`` is a real TCP peer on 127.0.0.1 that speaks ``protocol.py``'s frames and
records every byte it receives; ``RecordingProxy`` sits between a client and the real server
and records both directions.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import pytest

from django_statemodes.exceptions import StateServerProtocolError, StateServerUnavailable
from django_statemodes.stateserver import protocol as p
from django_statemodes.stateserver.addresses import Address
from django_statemodes.stateserver.client import AsyncStateServerClient, StateServerClient
from tests.fixtures_stateserver import StateServerProcess

pytestmark = [pytest.mark.stateserver]

SECRET = b"correct horse battery staple, 32 bytes+"


def frames(data: bytes, role: p.Role) -> list[p.Event]:
    """Decode every frame in ``data`` as a connection playing ``role`` receives them."""
    conn = p.Connection(role)
    conn.receive_data(data)
    events: list[p.Event] = []
    while isinstance(event := conn.next_event(), p.Event):
        events.append(event)
    return events


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


# The server side: the real state server.


def handshake_with_version(port: int, version: int) -> tuple[p.Welcome, list[p.Event]]:
    """Send a HELLO with ``version``; return the WELCOME and what came after it until close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        conn = p.Connection(p.CLIENT)
        while isinstance(welcome := conn.next_event(), p.Status):
            conn.receive_data(sock.recv(4096))
        assert isinstance(welcome, p.Welcome)
        sock.sendall(conn.send(p.Hello(version=version, client_nonce=b"n" * p.NONCE_SIZE)))
        # Read to the end: a refused HELLO ends the connection (recv() then returns b"").
        conn.receive_data(read_until_closed(sock))
    replies: list[p.Event] = []
    while isinstance(event := conn.next_event(), p.Event):
        replies.append(event)
    return welcome, replies


@pytest.mark.parametrize("version", [0, p.PROTOCOL_VERSION + 1, 255])
def test_a_hello_with_another_version_gets_unsupported_version_and_the_server_stays_up(
    stateserver: StateServerProcess,
    version: int,
) -> None:
    bystander = StateServerClient(Address("127.0.0.1", stateserver.port), timeout=5)
    assert bystander.ping(b"before") == b"before"  # a connection open across the refusal

    welcome, replies = handshake_with_version(stateserver.port, version)

    assert (welcome.min_version, welcome.max_version) == (1, p.PROTOCOL_VERSION)
    assert len(replies) == 1
    error = replies[0]
    assert isinstance(error, p.Error)
    assert error.code == p.ErrorCode.UNSUPPORTED_VERSION
    assert error.request_id == 0  # about the connection, which the server then closed
    assert f"protocol version {version} is not supported" in error.message
    assert bystander.ping(b"after") == b"after"
    fresh = StateServerClient(Address("127.0.0.1", stateserver.port), timeout=5)
    assert fresh.ping(b"new") == b"new"


def test_a_hello_with_the_servers_version_is_answered_with_ready(
    stateserver: StateServerProcess,
) -> None:
    # The control for the test above: the same raw exchange succeeds with the right version.
    with socket.create_connection(("127.0.0.1", stateserver.port), timeout=5) as sock:
        conn = p.Connection(p.CLIENT)
        while isinstance(conn.next_event(), p.Status):
            conn.receive_data(sock.recv(4096))
        sock.sendall(conn.send(p.Hello(client_nonce=b"n" * p.NONCE_SIZE)))
        while isinstance(ready := conn.next_event(), p.Status):
            conn.receive_data(sock.recv(4096))
        assert ready == p.Ready(b"")


# The client side: a scripted server.


class _Listener:
    """A listening socket on 127.0.0.1 served by a thread until ``__exit__``."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        # Closing a socket does not wake a thread blocked in accept() on Linux: poll instead.
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.listener.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(5)
            with sock:
                self.serve(sock)

    def serve(self, sock: socket.socket) -> None:
        raise NotImplementedError


Answer = Callable[[p.Hello, bytes], p.Event]


def ready_without_proof(hello: p.Hello, nonce: bytes) -> p.Event:
    return p.Ready()


class ScriptedServer(_Listener):
    """A TCP peer that greets with a chosen WELCOME and answers HELLO with ``answer``.

    After READY it answers PING with PONG, so a client's first request can complete. Every byte
    received is kept in ``received``; ``hellos`` holds the decoded HELLOs.
    """

    def __init__(
        self,
        *,
        min_version: int = 1,
        max_version: int = p.PROTOCOL_VERSION,
        auth_required: bool = False,
        nonce: bytes = b"s" * p.NONCE_SIZE,
        answer: Answer = ready_without_proof,
    ) -> None:
        super().__init__()
        self.welcome = p.Welcome(min_version, max_version, nonce, auth_required)
        self.answer = answer
        self.received = bytearray()
        self.hellos: list[p.Hello] = []
        self.connections = 0

    def serve(self, sock: socket.socket) -> None:
        self.connections += 1
        try:
            self._talk(sock)
        except (OSError, p.ProtocolError):
            pass

    def _talk(self, sock: socket.socket) -> None:
        conn = p.Connection(p.SERVER)
        sock.sendall(conn.send(self.welcome))
        while True:
            event = conn.next_event()
            if event is p.NEED_DATA:
                data = sock.recv(4096)
                self.received += data
                conn.receive_data(data)
                continue
            if event is p.CLOSED:
                return
            if isinstance(event, p.Hello):
                self.hellos.append(event)
                reply = self.answer(event, self.welcome.nonce)
                sock.sendall(conn.send(reply))
                if isinstance(reply, p.Error):
                    return
            elif isinstance(event, p.Ping):
                sock.sendall(conn.send(p.Pong(event.request_id, event.payload)))


def ping_blocking(address: Address, secret: bytes | None = None) -> bytes:
    client = StateServerClient(address, timeout=5, secret=secret)
    try:
        return client.ping(b"hi")
    finally:
        client.close()


def ping_async(address: Address, secret: bytes | None = None) -> bytes:
    async def ping() -> bytes:
        client = AsyncStateServerClient(address, timeout=5, secret=secret)
        try:
            reply = await client.call(lambda rid: p.Ping(rid, b"hi"))
            assert isinstance(reply, p.Pong)
            return reply.payload
        finally:
            await client.aclose()

    return asyncio.run(ping())


CLIENTS = pytest.mark.parametrize("ping", [ping_blocking, ping_async], ids=["blocking", "async"])


@CLIENTS
@pytest.mark.parametrize(
    "versions", [(p.PROTOCOL_VERSION + 1, p.PROTOCOL_VERSION + 2), (0, 0)], ids=["newer", "older"]
)
def test_a_client_refuses_a_server_whose_versions_exclude_its_own(
    ping: Callable[..., bytes], versions: tuple[int, int]
) -> None:
    low, high = versions
    with (
        ScriptedServer(min_version=low, max_version=high) as server,
        pytest.raises(StateServerProtocolError) as info,
    ):
        ping(server.address)
    message = str(info.value)
    assert f"speaks protocol versions {low}-{high}" in message
    assert f"this client {p.MIN_PROTOCOL_VERSION}-{p.PROTOCOL_VERSION}" in message
    assert "upgrade the older side" in message
    assert str(server.address) in message
    # Refused on reading WELCOME: no HELLO (nor anything else) was sent, and it did not retry.
    assert bytes(server.received) == b""
    assert server.connections == 1


@CLIENTS
def test_a_client_picks_its_own_version_inside_a_wider_range(ping: Callable[..., bytes]) -> None:
    with ScriptedServer(min_version=1, max_version=9) as server:
        assert ping(server.address) == b"hi"
    assert [hello.version for hello in server.hellos] == [p.PROTOCOL_VERSION]


# The shared secret.


class RecordingProxy(_Listener):
    """Forward client connections to ``port``, keeping the bytes of each direction."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.upstream = port
        self.client_sent = bytearray()  # client -> server
        self.server_sent = bytearray()  # server -> client

    def serve(self, sock: socket.socket) -> None:
        with socket.create_connection(("127.0.0.1", self.upstream), timeout=5) as upstream:
            pumps = [
                threading.Thread(target=self._pump, args=(sock, upstream, self.client_sent)),
                threading.Thread(target=self._pump, args=(upstream, sock, self.server_sent)),
            ]
            for pump in pumps:
                pump.start()
            for pump in pumps:
                pump.join(10)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, record: bytearray) -> None:
        try:
            while data := source.recv(65536):
                record += data
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)  # pass the close on
        except OSError:
            pass


@pytest.fixture(scope="module")
def secret_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StateServerProcess]:
    secret_file: Path = tmp_path_factory.mktemp("secret") / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    with StateServerProcess("--allow-remote", "--secret-file", str(secret_file)) as server:
        yield server


def recorded_exchange(server: StateServerProcess) -> tuple[bytes, bytes]:
    """Ping the server with the right secret through a proxy; return (client's, server's) bytes."""
    with RecordingProxy(server.port) as proxy:
        assert ping_blocking(Address("127.0.0.1", proxy.port), SECRET) == b"hi"
    return bytes(proxy.client_sent), bytes(proxy.server_sent)


def test_the_secret_never_crosses_the_wire(secret_server: StateServerProcess) -> None:
    client_sent, server_sent = recorded_exchange(secret_server)

    assert SECRET not in client_sent
    assert SECRET not in server_sent
    # What travels instead is an HMAC bound to both nonces of this connection.
    welcome, ready, pong = frames(server_sent, p.CLIENT)
    hello, ping = frames(client_sent, p.SERVER)
    assert isinstance(welcome, p.Welcome) and welcome.auth_required
    assert isinstance(hello, p.Hello) and isinstance(ready, p.Ready)
    assert hello.proof == p.client_proof(SECRET, welcome.nonce, hello.client_nonce, "default")
    assert ready.proof == p.server_proof(SECRET, welcome.nonce, hello.client_nonce)
    assert isinstance(ping, p.Ping) and isinstance(pong, p.Pong)


def test_each_connection_uses_fresh_nonces(secret_server: StateServerProcess) -> None:
    first = frames(recorded_exchange(secret_server)[0], p.SERVER)[0]
    second = frames(recorded_exchange(secret_server)[0], p.SERVER)[0]
    assert isinstance(first, p.Hello) and isinstance(second, p.Hello)
    assert first.client_nonce != second.client_nonce
    assert first.proof != second.proof


def test_a_replayed_client_proof_is_refused(secret_server: StateServerProcess) -> None:
    client_sent, _ = recorded_exchange(secret_server)
    hello_length = int.from_bytes(client_sent[:4], "big") + 4
    recorded_hello = client_sent[:hello_length]
    assert isinstance(frames(recorded_hello, p.SERVER)[0], p.Hello)

    # An eavesdropper sends the recorded HELLO, byte for byte, on a connection of its own.
    with socket.create_connection(("127.0.0.1", secret_server.port), timeout=5) as sock:
        sock.sendall(recorded_hello)
        welcome, error = frames(read_until_closed(sock), p.CLIENT)

    assert isinstance(welcome, p.Welcome)
    assert isinstance(error, p.Error)
    assert error.code == p.ErrorCode.AUTH_FAILED


@CLIENTS
def test_a_client_refuses_a_server_that_proves_a_different_secret(
    ping: Callable[..., bytes],
) -> None:
    def other_secret(hello: p.Hello, nonce: bytes) -> p.Event:
        return p.Ready(p.server_proof(b"another secret", nonce, hello.client_nonce))

    with (
        ScriptedServer(auth_required=True, answer=other_secret) as impostor,
        pytest.raises(StateServerUnavailable, match="could not prove it knows") as info,
    ):
        ping(impostor.address, SECRET)
    assert info.value.setting == "STATEMODES_STATE_SECRET"
    assert len(impostor.hellos) == 1  # refused after READY, before any request

    # The control: the same scripted server proving our secret is accepted.
    def our_secret(hello: p.Hello, nonce: bytes) -> p.Event:
        return p.Ready(p.server_proof(SECRET, nonce, hello.client_nonce))

    with ScriptedServer(auth_required=True, answer=our_secret) as genuine:
        assert ping(genuine.address, SECRET) == b"hi"


@CLIENTS
def test_a_client_refuses_a_replayed_server_proof(
    secret_server: StateServerProcess, ping: Callable[..., bytes]
) -> None:
    _, server_sent = recorded_exchange(secret_server)
    welcome, ready, _ = frames(server_sent, p.CLIENT)
    assert isinstance(welcome, p.Welcome) and isinstance(ready, p.Ready)

    # An impostor replays the real server's WELCOME nonce and READY proof of that exchange; it
    # fails because the client's own nonce is new on every connection.
    def replay(hello: p.Hello, nonce: bytes) -> p.Event:
        return p.Ready(ready.proof)

    with (
        ScriptedServer(auth_required=True, nonce=welcome.nonce, answer=replay) as impostor,
        pytest.raises(StateServerUnavailable, match="could not prove it knows"),
    ):
        ping(impostor.address, SECRET)
    assert len(impostor.hellos) == 1
