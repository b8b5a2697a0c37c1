"""Clients of the state server: blocking (one persistent connection per thread) and asyncio.

Both are thin adapters over ``protocol.Connection``: one frame out and one frame in per operation
(one round trip), ``TCP_NODELAY`` set, connect and read timeouts from the network timeout
(ASP.NET ``stateNetworkTimeout``), and one transparent reconnect when a kept connection turns
out to be broken (the server restarted between two requests). Anything else raises
``StateServerUnavailable`` naming the address and the setting to check, which the middleware
answers with a 503 (ASP.NET's "Unable to make the session state request...").
"""

from __future__ import annotations

import asyncio
import hmac
import os
import secrets
import socket
import struct
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from django_statemodes.exceptions import (
    StateServerError,
    StateServerFull,
    StateServerProtocolError,
    StateServerUnavailable,
)
from django_statemodes.items import ExpiredItem, StateItem

from . import protocol as p
from .addresses import Address

__all__ = ["AsyncStateServerClient", "StateServerClient"]

RECV_SIZE = 256 * 1024
SETTING = "STATEMODES_STATE_CONNECTION"

E = TypeVar("E", bound=p.Event)


class _Broken(Exception):
    """A connection failed in a way that a fresh connection may fix."""


# Forked children (gunicorn workers) must not share their parent's sockets.
_generation = 0


def _forked() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_forked)


def _unavailable(address: Address, reason: str) -> StateServerUnavailable:
    return StateServerUnavailable(
        f"Unable to make the session state request to the state server at {address}: {reason}. "
        "Please ensure that the state server is running (manage.py runstateserver or "
        f"statemodes-stateserver) and that {SETTING} names its address and port; a server on "
        "another machine must run with --allow-remote and the same STATEMODES_STATE_SECRET.",
        setting=SETTING,
    )


def _error(address: Address, event: p.Error) -> StateServerError:
    if event.code == p.ErrorCode.STORE_FULL:
        return StateServerFull(f"The state server at {address} refused a write: {event.message}")
    if event.code in (p.ErrorCode.AUTH_FAILED, p.ErrorCode.AUTH_REQUIRED):
        return StateServerUnavailable(
            f"The state server at {address} refused the connection: {event.message}. Check "
            "that STATEMODES_STATE_SECRET matches the server's --secret-file or "
            "STATEMODES_STATE_SECRET.",
            setting="STATEMODES_STATE_SECRET",
        )
    if event.code == p.ErrorCode.SHUTTING_DOWN:
        return _unavailable(address, event.message)
    return StateServerProtocolError(
        f"The state server at {address} answered error {event.code}: {event.message}"
    )


class _Handshake:
    """The client half of the handshake, shared by the blocking and the asyncio client."""

    def __init__(self, address: Address, application: str, secret: bytes | None) -> None:
        self.address = address
        self.application = application
        self.secret = secret
        self.client_nonce = secrets.token_bytes(p.NONCE_SIZE)

    def hello(self, welcome: p.Event) -> p.Hello:
        if not isinstance(welcome, p.Welcome):
            raise StateServerProtocolError(f"{self.address} did not greet with WELCOME")
        if not welcome.min_version <= p.PROTOCOL_VERSION <= welcome.max_version:
            raise StateServerProtocolError(
                f"the state server at {self.address} speaks protocol versions "
                f"{welcome.min_version}-{welcome.max_version}, this client "
                f"{p.PROTOCOL_VERSION}: upgrade the older side"
            )
        self.nonce = welcome.nonce
        if welcome.auth_required and self.secret is None:
            raise StateServerUnavailable(
                f"The state server at {self.address} requires a shared secret: set "
                "STATEMODES_STATE_SECRET to the server's secret.",
                setting="STATEMODES_STATE_SECRET",
            )
        if self.secret is not None and not welcome.auth_required:
            # A server that does not know the secret cannot prove it is ours.
            raise StateServerUnavailable(
                f"The state server at {self.address} does not use a shared secret but "
                "STATEMODES_STATE_SECRET is set: start it with --secret-file, or unset the "
                "setting.",
                setting="STATEMODES_STATE_SECRET",
            )
        proof = b""
        if self.secret is not None:
            proof = p.client_proof(self.secret, self.nonce, self.client_nonce, self.application)
        return p.Hello(p.PROTOCOL_VERSION, self.application, self.client_nonce, proof)

    def check_ready(self, event: p.Event) -> None:
        if isinstance(event, p.Error):
            raise _error(self.address, event)
        if not isinstance(event, p.Ready):
            raise StateServerProtocolError(f"{self.address} did not answer HELLO with READY")
        if self.secret is not None:
            expected = p.server_proof(self.secret, self.nonce, self.client_nonce)
            if not hmac.compare_digest(expected, event.proof):
                raise StateServerUnavailable(
                    f"The state server at {self.address} could not prove it knows the shared "
                    "secret (STATEMODES_STATE_SECRET differs from the server's).",
                    setting="STATEMODES_STATE_SECRET",
                )


class _Link:
    """One blocking connection, used by one thread.

    The socket stays in blocking mode and its timeouts are the kernel's (SO_RCVTIMEO,
    SO_SNDTIMEO): a Python socket timeout would add a poll() before every send and every
    receive, two system calls per round trip. Replies are read into one buffer kept per link.
    """

    __slots__ = ("sock", "conn", "next_id", "generation", "buffer", "view", "kernel_timeouts")

    def __init__(self, sock: socket.socket, conn: p.Connection) -> None:
        self.sock = sock
        self.conn = conn
        self.next_id = 0
        self.generation = _generation
        self.buffer = bytearray(RECV_SIZE)
        self.view = memoryview(self.buffer)
        self.kernel_timeouts = False

    def set_timeout(self, seconds: float) -> None:
        """Bound every later send and receive by ``seconds``."""
        if _KERNEL_TIMEOUTS:
            value = _timeval(seconds)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
            except OSError:
                pass
            else:
                if not self.kernel_timeouts:
                    self.sock.settimeout(None)
                    self.kernel_timeouts = True
                return
        self.sock.settimeout(seconds)

    def set_read_timeout(self, seconds: float) -> None:
        if self.kernel_timeouts:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
        else:
            self.sock.settimeout(seconds)

    def read_event(self) -> p.Event:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is p.NEED_DATA:
                try:
                    count = self.sock.recv_into(self.buffer)
                except BlockingIOError as exc:  # SO_RCVTIMEO ran out
                    raise TimeoutError("timed out") from exc
                conn.receive_data(self.view[:count])  # copied by the Connection
                continue
            if event is p.CLOSED:
                raise _Broken("the server closed the connection")
            return event

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# Linux and macOS take a struct timeval for SO_RCVTIMEO; elsewhere Python's own timeouts are used.
_KERNEL_TIMEOUTS = sys.platform.startswith(("linux", "darwin"))
_TIMEVAL = struct.Struct("@ll")


def _timeval(seconds: float) -> bytes:
    # Zero would mean "no timeout" to the kernel: the shortest bound is one microsecond.
    micros = max(1, round(seconds * 1_000_000))
    return _TIMEVAL.pack(*divmod(micros, 1_000_000))


def _secret_bytes(secret: str | bytes | None) -> bytes | None:
    if secret is None or secret == "":
        return None
    return secret.encode() if isinstance(secret, str) else secret


class StateServerClient:
    """A blocking client for one state server; safe to share between threads.

    Args:
        address: where the server listens.
        timeout: connect and read timeout in seconds (STATEMODES_STATE_NETWORK_TIMEOUT).
        application: the namespace (STATEMODES_APPLICATION_NAME).
        secret: the shared secret (STATEMODES_STATE_SECRET), if the server needs one.
        socket_factory: opens the TCP connection (tests may inject one).
    """

    def __init__(
        self,
        address: Address,
        *,
        timeout: float = 10.0,
        application: str = "default",
        secret: str | bytes | None = None,
        max_frame_size: int = p.DEFAULT_MAX_FRAME_SIZE,
        socket_factory: Callable[..., socket.socket] = socket.create_connection,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.application = application
        self.secret = _secret_bytes(secret)
        self.max_frame_size = max_frame_size
        self.socket_factory = socket_factory
        self._local = threading.local()
        self._links: weakref.WeakSet[Any] = weakref.WeakSet()

    # Connections

    def _connect(self) -> _Link:
        try:
            sock = self.socket_factory((self.address.host, self.address.port), self.timeout)
        except OSError as exc:
            raise _unavailable(self.address, f"cannot connect ({exc})") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(sock, p.Connection(p.CLIENT, max_frame_size=self.max_frame_size))
        try:
            link.set_timeout(self.timeout)
            handshake = _Handshake(self.address, self.application, self.secret)
            hello = handshake.hello(link.read_event())
            sock.sendall(link.conn.send(hello))
            handshake.check_ready(link.read_event())
        except (OSError, _Broken, p.ProtocolError) as exc:
            link.close()
            raise _unavailable(self.address, f"handshake failed ({exc})") from exc
        except BaseException:
            link.close()
            raise
        self._links.add(link.sock)
        return link

    def close(self) -> None:
        """Close every connection of every thread."""
        for sock in list(self._links):
            try:
                sock.close()
            except OSError:
                pass
        self._local = threading.local()

    def _exchange(self, link: _Link, event: p.Request, read_timeout: float | None) -> p.Event:
        try:
            link.sock.sendall(link.conn.send(event))
        except BlockingIOError as exc:  # SO_SNDTIMEO ran out
            raise TimeoutError("timed out") from exc
        if read_timeout is None:
            return link.read_event()
        link.set_read_timeout(read_timeout)
        try:
            return link.read_event()
        finally:
            link.set_read_timeout(self.timeout)

    def call(self, make: Callable[[int], p.Request], read_timeout: float | None = None) -> p.Event:
        """Send one request (built by ``make(request_id)``) and return its reply."""
        link: _Link | None = getattr(self._local, "link", None)
        reused = link is not None and link.generation == _generation
        if not reused:
            link = self._local.link = self._connect()
        assert link is not None
        for attempt in (1, 2):
            link.next_id = request_id = (link.next_id + 1) & 0xFFFFFFFF
            try:
                reply = self._exchange(link, make(request_id), read_timeout)
                if isinstance(reply, p.Error) and reply.request_id == 0:
                    # A connection-level error (the server closes): read before our answer.
                    if reply.code != p.ErrorCode.SHUTTING_DOWN:
                        self._drop(link)
                        raise _error(self.address, reply)
                    raise _Broken(reply.message)
            except TimeoutError as exc:
                self._drop(link)
                raise _unavailable(
                    self.address,
                    f"no answer within {read_timeout or self.timeout} s "
                    "(STATEMODES_STATE_NETWORK_TIMEOUT)",
                ) from exc
            except (OSError, _Broken, p.RemoteProtocolError) as exc:
                self._drop(link)
                if attempt == 2 or not reused:
                    raise _unavailable(self.address, f"connection lost ({exc})") from exc
                # One transparent reconnect: a kept connection broke while idle.
                link = self._local.link = self._connect()
                continue
            if reply.request_id != request_id:  # type: ignore[attr-defined]
                self._drop(link)
                raise StateServerProtocolError(f"{self.address} answered another request")
            if isinstance(reply, p.Error):
                raise _error(self.address, reply)
            return reply
        raise AssertionError("unreachable")

    def _drop(self, link: _Link) -> None:
        link.close()
        if getattr(self._local, "link", None) is link:
            self._local.link = None

    def _read_more(self) -> p.Event:
        link: _Link = self._local.link
        try:
            return link.read_event()
        except (OSError, _Broken, p.RemoteProtocolError) as exc:
            self._drop(link)
            raise _unavailable(self.address, f"connection lost ({exc})") from exc

    # Operations (the provider contract, plus ping, stats, purge and wait)

    def get(self, key: str) -> StateItem | None:
        return _state_item(self.address, self.call(lambda rid: p.Get(rid, key)))

    def get_exclusive(self, key: str) -> StateItem | None:
        return _state_item(self.address, self.call(lambda rid: p.GetExclusive(rid, key)))

    def set_and_release(
        self,
        key: str,
        data: bytes | None,
        *,
        lock_id: int | None,
        timeout: int,
        new_item: bool = False,
        release: bool = True,
    ) -> bool:
        reply = self.call(
            lambda rid: p.SetAndRelease(rid, key, data, lock_id, timeout, new_item, release)
        )
        return bool(_expect(self.address, reply, p.Result).value)

    def release(self, key: str, lock_id: int) -> None:
        _expect(self.address, self.call(lambda rid: p.Release(rid, key, lock_id)), p.Result)

    def remove(self, key: str, lock_id: int | None = None) -> bool:
        reply = self.call(lambda rid: p.Remove(rid, key, lock_id))
        return bool(_expect(self.address, reply, p.Result).value)

    def reset_timeout(self, key: str) -> None:
        _expect(self.address, self.call(lambda rid: p.ResetTimeout(rid, key)), p.Result)

    def create_uninitialized(self, key: str, timeout: int) -> bool:
        reply = self.call(lambda rid: p.CreateUninitialized(rid, key, timeout))
        return bool(_expect(self.address, reply, p.Result).value)

    def purge_expired(
        self, *, on_expired: Callable[[ExpiredItem], None] | None = None, dry_run: bool = False
    ) -> int:
        reply = self.call(lambda rid: p.PurgeExpired(rid, on_expired is not None, dry_run))
        while isinstance(reply, p.ExpiredBatch):
            if on_expired is not None:
                for key, data in reply.items:
                    on_expired(ExpiredItem(key, data))
            reply = self._read_more()
        return _expect(self.address, reply, p.Result).value

    def wait(self, key: str, lock_id: int, timeout: float) -> bool:
        """Block until the server says lock ``lock_id`` ended (True) or ``timeout`` passed."""
        reply = self.call(lambda rid: p.Wait(rid, key, lock_id, timeout), timeout + self.timeout)
        return _expect(self.address, reply, p.Released).released

    def ping(self, payload: bytes = b"") -> bytes:
        return _expect(self.address, self.call(lambda rid: p.Ping(rid, payload)), p.Pong).payload

    def stats(self) -> dict[str, Any]:
        return _expect(self.address, self.call(p.Stats), p.StatsReply).stats

    def purge(self) -> int:
        """Remove every session of this client's application; return how many."""
        return _expect(self.address, self.call(p.Purge), p.Result).value


def _expect(address: Address, reply: p.Event, kind: type[E]) -> E:
    if not isinstance(reply, kind):
        raise StateServerProtocolError(
            f"{address} answered {type(reply).__name__} where {kind.__name__} was expected"
        )
    return reply


def _state_item(address: Address, reply: p.Event) -> StateItem | None:
    if isinstance(reply, p.NotFound):
        return None
    item = _expect(address, reply, p.Item)
    return StateItem(
        data=item.data,
        locked=item.locked,
        lock_id=item.lock_id,
        lock_age=item.lock_age,
        initialize=item.initialize,
    )


class _AsyncLink:
    """One asyncio connection shared by the tasks of one event loop (pipelined by request id)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: p.Connection
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[p.Event]] = {}
        self.broken: BaseException | None = None
        self.task: asyncio.Task[None] | None = None

    async def read_event(self) -> p.Event:
        while True:
            event = self.conn.next_event()
            if event is p.NEED_DATA:
                self.conn.receive_data(await self.reader.read(RECV_SIZE))
                continue
            if event is p.CLOSED:
                raise _Broken("the server closed the connection")
            return event

    async def dispatch(self) -> None:
        try:
            while True:
                event = await self.read_event()
                future = self.pending.pop(getattr(event, "request_id", 0), None)
                if future is not None and not future.done():
                    future.set_result(event)
                elif isinstance(event, p.Error):
                    raise _Broken(f"error {event.code}: {event.message}")
        except (OSError, _Broken, p.ProtocolError, asyncio.CancelledError) as exc:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        self.broken = exc
        for future in self.pending.values():
            if not future.done():
                future.set_exception(_Broken(str(exc) or type(exc).__name__))
        self.pending.clear()
        self.writer.close()


class AsyncStateServerClient:
    """The asyncio twin of ``StateServerClient``: one pipelined connection per event loop."""

    def __init__(
        self,
        address: Address,
        *,
        timeout: float = 10.0,
        application: str = "default",
        secret: str | bytes | None = None,
        max_frame_size: int = p.DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.application = application
        self.secret = _secret_bytes(secret)
        self.max_frame_size = max_frame_size
        # One link per event loop. Not a WeakKeyDictionary: a link refers to its loop through its
        # transport, so the key would never die; links of closed loops are swept instead.
        self._links: dict[asyncio.AbstractEventLoop, _AsyncLink] = {}

    async def _connect(self) -> _AsyncLink:
        for loop in [loop for loop in self._links if loop.is_closed()]:
            # asyncio.run() or async_to_sync ended that loop; dropping the link lets the garbage
            # collector close its socket.
            del self._links[loop]
        host, port = self.address
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=RECV_SIZE), self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise _unavailable(self.address, f"cannot connect ({exc})") from exc
        link = _AsyncLink(
            reader, writer, p.Connection(p.CLIENT, max_frame_size=self.max_frame_size)
        )
        try:
            handshake = _Handshake(self.address, self.application, self.secret)
            welcome = await asyncio.wait_for(link.read_event(), self.timeout)
            writer.write(link.conn.send(handshake.hello(welcome)))
            handshake.check_ready(await asyncio.wait_for(link.read_event(), self.timeout))
        except (OSError, TimeoutError, _Broken, p.ProtocolError) as exc:
            writer.close()
            raise _unavailable(self.address, f"handshake failed ({exc})") from exc
        except BaseException:
            writer.close()
            raise
        link.task = asyncio.get_running_loop().create_task(link.dispatch())
        return link

    async def call(
        self, make: Callable[[int], p.Request], read_timeout: float | None = None
    ) -> p.Event:
        loop = asyncio.get_running_loop()
        link = self._links.get(loop)
        reused = link is not None and link.broken is None
        if link is None or link.broken is not None:
            link = self._links[loop] = await self._connect()
        for attempt in (1, 2):
            link.next_id = request_id = (link.next_id + 1) & 0xFFFFFFFF
            future: asyncio.Future[p.Event] = loop.create_future()
            link.pending[request_id] = future
            try:
                link.writer.write(link.conn.send(make(request_id)))
                reply = await asyncio.wait_for(future, read_timeout or self.timeout)
            except TimeoutError as exc:
                link.fail(exc)
                raise _unavailable(
                    self.address,
                    f"no answer within {read_timeout or self.timeout} s "
                    "(STATEMODES_STATE_NETWORK_TIMEOUT)",
                ) from exc
            except (OSError, _Broken) as exc:
                link.fail(exc)
                if attempt == 2 or not reused:
                    raise _unavailable(self.address, f"connection lost ({exc})") from exc
                link = self._links[loop] = await self._connect()
                continue
            if isinstance(reply, p.Error):
                raise _error(self.address, reply)
            return reply
        raise AssertionError("unreachable")

    async def get(self, key: str) -> StateItem | None:
        return _state_item(self.address, await self.call(lambda rid: p.Get(rid, key)))

    async def get_exclusive(self, key: str) -> StateItem | None:
        return _state_item(self.address, await self.call(lambda rid: p.GetExclusive(rid, key)))

    async def set_and_release(
        self,
        key: str,
        data: bytes | None,
        *,
        lock_id: int | None,
        timeout: int,
        new_item: bool = False,
        release: bool = True,
    ) -> bool:
        reply = await self.call(
            lambda rid: p.SetAndRelease(rid, key, data, lock_id, timeout, new_item, release)
        )
        return bool(_expect(self.address, reply, p.Result).value)

    async def release(self, key: str, lock_id: int) -> None:
        reply = await self.call(lambda rid: p.Release(rid, key, lock_id))
        _expect(self.address, reply, p.Result)

    async def remove(self, key: str, lock_id: int | None = None) -> bool:
        reply = await self.call(lambda rid: p.Remove(rid, key, lock_id))
        return bool(_expect(self.address, reply, p.Result).value)

    async def wait(self, key: str, lock_id: int, timeout: float) -> bool:
        reply = await self.call(
            lambda rid: p.Wait(rid, key, lock_id, timeout), timeout + self.timeout
        )
        return _expect(self.address, reply, p.Released).released

    async def aclose(self) -> None:
        for link in list(self._links.values()):
            link.fail(_Broken("closed"))
            if link.task is not None:
                link.task.cancel()
        self._links.clear()
