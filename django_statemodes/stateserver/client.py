"""Clients of the state server: blocking (a bounded pool of connections) and asyncio.

Both only move bytes: every request they send, every reply check, every error message and the
handshake come from ``operations`` (one copy, so the two cannot drift). Each is a thin adapter over
``protocol.Connection``: one frame out and one frame in per operation (one round trip),
``TCP_NODELAY`` set, connect and read timeouts from the network timeout (ASP.NET
``stateNetworkTimeout``), and one transparent reconnect when a kept connection turns out to be
broken (the server restarted between two requests). Anything else raises
``StateServerUnavailable`` naming the address and the setting to check, which the middleware
answers with a 503 (ASP.NET's "Unable to make the session state request...").

The blocking client lends one connection of a bounded ``pool.Pool`` to each call, so a process
holds at most ``pool_size`` connections whatever the number of threads that ever served it
(``runserver`` and ASGI's ``sync_to_async`` start new ones all the time); a call that finds them
all busy for ``pool_wait`` seconds gets ``SessionPoolExhausted`` (503). A WAIT holds its
connection for the wait. Settings-free: the provider passes the sizes in.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from django_statemodes.exceptions import StateServerError
from django_statemodes.items import ExpiredItem, SessionInfo, StateItem
from django_statemodes.memory import MAX_IP_LENGTH, MAX_USER_AGENT_LENGTH, check_user_id
from django_statemodes.providers.pool import Pool, PoolStats

from . import operations as ops
from . import protocol as p
from .addresses import Address
from .operations import MORE, Broken, Op

__all__ = ["AsyncStateServerClient", "StateServerClient"]

RECV_SIZE = 256 * 1024
# How long a waiter that found every wait slot taken sleeps before it looks at the lock again.
WAIT_SLOT_PAUSE = 0.05

P = ParamSpec("P")
T = TypeVar("T")

#: Most LIST_SESSIONS pages one ``user_sessions`` reads (a million sessions of one user).
MAX_PAGES = 1000


def _client_details(
    user_id: str | None, ip: str | None, user_agent: str | None
) -> tuple[str | None, str | None]:
    """Check a user id (ValueError before any I/O) and cut ip and user agent as the store does."""
    if user_id is not None:
        check_user_id(user_id)
    return (
        None if ip is None else ip[:MAX_IP_LENGTH],
        None if user_agent is None else user_agent[:MAX_USER_AGENT_LENGTH],
    )


# Forked children (gunicorn workers) must not share their parent's sockets.
_generation = 0


def _forked() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_forked)


def _secret_bytes(secret: str | bytes | None) -> bytes | None:
    if secret is None or secret == "":
        return None
    return secret.encode() if isinstance(secret, str) else secret


class _Client:
    """What both clients are configured with."""

    def __init__(
        self,
        address: Address,
        *,
        timeout: float = 10.0,
        application: str = "default",
        secret: str | bytes | None = None,
        max_frame_size: int = p.DEFAULT_MAX_FRAME_SIZE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if address.tls and ssl_context is None:
            raise ValueError(f"{address} is a tls= address: pass its ssl_context")
        self.address = address
        self.timeout = timeout
        self.application = application
        self.secret = _secret_bytes(secret)
        self.max_frame_size = max_frame_size
        #: TLS for the link (``tls=host:port``; ``stateserver.tls.client_context``), or None.
        self.ssl_context = ssl_context

    def _handshake(self) -> ops.Handshake:
        return ops.handshake(self.address, self.application, self.secret)


# The blocking client.


class _Link:
    """One blocking connection, lent to one thread at a time by the client's pool.

    The socket stays in blocking mode and its timeouts are the kernel's (SO_RCVTIMEO,
    SO_SNDTIMEO): a Python socket timeout would add a poll() before every send and every
    receive, two system calls per round trip. Replies are read into one buffer kept per link.
    """

    __slots__ = (
        "buffer",
        "closed",
        "conn",
        "generation",
        "kernel_timeouts",
        "next_id",
        "sock",
        "view",
    )

    def __init__(self, sock: socket.socket, conn: p.Connection) -> None:
        self.sock = sock
        self.conn = conn
        self.next_id = 0
        self.generation = _generation
        self.buffer = bytearray(RECV_SIZE)
        self.view = memoryview(self.buffer)
        self.kernel_timeouts = False
        self.closed = False

    def set_timeout(self, seconds: float) -> None:
        """Bound every later send and receive by ``seconds``."""
        # Not under TLS: the ssl module does not report an expired SO_RCVTIMEO as a timeout (it
        # retries the read, or raises SSLWantReadError), so TLS links keep Python's timeouts.
        if _KERNEL_TIMEOUTS and not isinstance(self.sock, ssl.SSLSocket):
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

    def send(self, event: p.Event) -> None:
        try:
            self.sock.sendall(self.conn.send(event))
        except BlockingIOError as exc:  # SO_SNDTIMEO ran out
            raise TimeoutError("timed out") from exc

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
                raise Broken("the server closed the connection")
            return event

    def close(self) -> None:
        self.closed = True
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


class StateServerClient(_Client):
    """A blocking client for one state server; safe to share between threads.

    Args:
        address: where the server listens.
        timeout: connect and read timeout in seconds (STATEMODES_STATE_NETWORK_TIMEOUT).
        application: the namespace (STATEMODES_APPLICATION_NAME).
        secret: the shared secret (STATEMODES_STATE_SECRET), if the server needs one.
        ssl_context: TLS for a ``tls=`` address (``stateserver.tls.client_context``).
        socket_factory: opens the TCP connection (tests may inject one).
        pool_size: most connections open at once (STATEMODES_MAX_CONNECTIONS).
        pool_wait: seconds a call waits for a free connection (STATEMODES_CONNECTION_WAIT).
        idle_timeout: an idle connection older than this is closed
            (STATEMODES_CONNECTION_IDLE_TIMEOUT).
    """

    def __init__(
        self,
        address: Address,
        *,
        timeout: float = 10.0,
        application: str = "default",
        secret: str | bytes | None = None,
        max_frame_size: int = p.DEFAULT_MAX_FRAME_SIZE,
        ssl_context: ssl.SSLContext | None = None,
        socket_factory: Callable[..., socket.socket] = socket.create_connection,
        pool_size: int = 10,
        pool_wait: float = 5.0,
        idle_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            address,
            timeout=timeout,
            application=application,
            secret=secret,
            max_frame_size=max_frame_size,
            ssl_context=ssl_context,
        )
        self.socket_factory = socket_factory
        self.pool_size, self.pool_wait, self.idle_timeout = pool_size, pool_wait, idle_timeout
        self._pool = self._new_pool()
        self._pool_generation = _generation
        # A WAIT holds its connection until the lock ends. Waits may hold all but one of the
        # pool's connections, so a lock's holder always finds one to save and release with:
        # otherwise the waiters fill the pool, the holder's release waits for a connection, and
        # nothing moves until the lock timeout breaks the lock.
        self._wait_slots = threading.BoundedSemaphore(max(1, pool_size - 1))
        self._wait_for_slot = pool_size > 1
        # Every socket opened, lent or idle, for close(): a socket of a closed client must not
        # outlive it in a thread that holds it (a WAIT, say).
        self._links: weakref.WeakSet[Any] = weakref.WeakSet()

    def _new_pool(self) -> Pool[_Link]:
        return Pool(
            self._connect,
            _Link.close,
            size=self.pool_size,
            wait=self.pool_wait,
            idle_timeout=self.idle_timeout,
            name=f"the state server at {self.address}",
        )

    @property
    def pool(self) -> Pool[_Link]:
        """The pool of this process's connections to the server."""
        return self._current_pool()

    def _current_pool(self) -> Pool[_Link]:
        pool = self._pool
        if self._pool_generation != _generation:
            # A forked child (a gunicorn worker): its parent's sockets, idle or lent out at the
            # fork, are the parent's. A new pool; the old one is dropped without a word on them.
            pool = self._pool = self._new_pool()
            self._pool_generation = _generation
        return pool

    @property
    def pool_stats(self) -> PoolStats:
        """What the connection pool did (opened, closed, waited, exhausted)."""
        return self._current_pool().stats

    # Connections

    def _connect(self) -> _Link:
        try:
            sock = self.socket_factory((self.address.host, self.address.port), self.timeout)
        except OSError as exc:
            raise ops.unavailable(self.address, f"cannot connect ({exc})") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            try:  # the TLS handshake, bounded by the connect timeout already set on the socket
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.address.host)
            except OSError as exc:  # ssl.SSLError, a timeout, a reset
                sock.close()
                raise ops.tls_failed(self.address, exc) from exc
        link = _Link(sock, p.Connection(p.CLIENT, max_frame_size=self.max_frame_size))
        try:
            link.set_timeout(self.timeout)
            steps = self._handshake()
            outgoing = next(steps)
            while True:
                if outgoing is not None:
                    link.send(outgoing)
                try:
                    outgoing = steps.send(link.read_event())
                except StopIteration:
                    break
        except (OSError, Broken, p.ProtocolError) as exc:
            link.close()
            raise ops.handshake_failed(self.address, exc) from exc
        except BaseException:
            link.close()
            raise
        self._links.add(link.sock)
        return link

    def close(self) -> None:
        """Close every connection, idle or lent out (a call in flight on one fails)."""
        self._current_pool().close()
        for sock in list(self._links):
            try:
                sock.close()
            except OSError:
                pass

    def _drop(self, link: _Link) -> None:
        link.close()  # the pool discards a closed link when it comes back

    def _exchange(
        self, link: _Link, event: p.Request | None, read_timeout: float | None
    ) -> p.Reply:
        """Send ``event`` (None: nothing, a reply's next part) and return the next reply."""
        try:
            if event is not None:  # _Link.send inlined: one call less per request
                link.sock.sendall(link.conn.send(event))
            if read_timeout is None:  # the usual case: the network timeout is in force already
                reply = link.read_event()
            else:
                link.set_read_timeout(read_timeout)
                try:
                    reply = link.read_event()
                finally:
                    link.set_read_timeout(self.timeout)
        except (TimeoutError, BlockingIOError) as exc:  # BlockingIOError: SO_SNDTIMEO ran out
            self._drop(link)
            raise ops.no_answer(self.address, read_timeout or self.timeout) from exc
        if isinstance(reply, p.Error) and reply.request_id == 0:
            # A connection-level error (the server closes), read before our answer.
            self._drop(link)
            raise ops.closed_by_server(self.address, reply)
        return reply  # type: ignore[return-value]  # past the handshake, every frame is a reply

    def run(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Send ``op``'s request (built from ``args``) and return its result."""
        pool = self._current_pool()
        link, slot = pool.acquire()
        held = [link]  # the link the call ends on: a reconnect replaces it in the same slot
        try:
            result = self._run(held, op, *args, **kwargs)
        except StateServerError:
            # An answer read in full (an error reply) leaves the link in step; the failures
            # that do not have dropped (closed) it already.
            pool.release(held[0], slot, broken=held[0].closed)
            raise
        except BaseException:
            # Anything else (an on_expired callback's error, KeyboardInterrupt) may leave a
            # reply half read: that link is never lent again.
            pool.release(held[0], slot, broken=True)
            raise
        pool.release(held[0], slot, broken=held[0].closed)
        return result

    def _run(self, held: list[_Link], op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        link = held[0]
        if link.generation != _generation:  # opened before a fork: the parent's socket
            link.closed = True
            link = held[0] = self._connect()
        # A link that served a request before may have broken while idle in the pool.
        reused = link.next_id != 0
        if op.version > link.conn.version:
            raise ops.too_old(self.address, link.conn.version, op)
        read_timeout = self.timeout + op.hold if op.hold else None
        for attempt in (1, 2):
            link.next_id = request_id = ops.next_request_id(link.next_id)
            try:
                reply = self._exchange(link, op.make(request_id, *args, **kwargs), read_timeout)
                break
            except (OSError, Broken, p.RemoteProtocolError) as exc:
                self._drop(link)
                if attempt == 2 or not reused:
                    raise ops.lost(self.address, exc) from exc
                # One transparent reconnect: a kept connection broke while idle.
                link = held[0] = self._connect()
        else:
            raise AssertionError("unreachable")
        while True:
            if reply.request_id != request_id:
                self._drop(link)
                raise ops.another_request(self.address)
            if isinstance(reply, p.Error):
                raise ops.error(self.address, reply)
            result = op.interpret(self.address, reply)
            if result is not MORE:
                return result
            # A reply in parts: no retry from here on, the parts read so far were consumed.
            try:
                reply = self._exchange(link, None, read_timeout)
            except (OSError, Broken, p.RemoteProtocolError) as exc:
                self._drop(link)
                raise ops.lost(self.address, exc) from exc

    def call(self, make: Callable[[int], p.Request]) -> p.Event:
        """Send one request (built by ``make(request_id)``) and return its reply."""
        return self.run(Op(make, ops.raw))

    # Operations (the provider contract, plus ping, stats, purge and wait)

    def get(self, key: str) -> StateItem | None:
        return self.run(ops.GET, key)

    def get_exclusive(self, key: str) -> StateItem | None:
        return self.run(ops.GET_EXCLUSIVE, key)

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
        return self.run(ops.SET_AND_RELEASE, key, data, lock_id, timeout, new_item, release)

    def release(self, key: str, lock_id: int) -> None:
        self.run(ops.RELEASE, key, lock_id)

    def remove(self, key: str, lock_id: int | None = None) -> bool:
        return self.run(ops.REMOVE, key, lock_id)

    def reset_timeout(self, key: str) -> None:
        self.run(ops.RESET_TIMEOUT, key)

    def create_uninitialized(self, key: str, timeout: int) -> bool:
        return self.run(ops.CREATE_UNINITIALIZED, key, timeout)

    def purge_expired(
        self, *, on_expired: Callable[[ExpiredItem], None] | None = None, dry_run: bool = False
    ) -> int:
        return self.run(ops.purge_expired(on_expired, dry_run))

    def wait(self, key: str, lock_id: int, timeout: float) -> bool:
        """Block until the server says lock ``lock_id`` ended (True) or ``timeout`` passed.

        Returns False at once after a short sleep when every wait slot is taken (see
        ``__init__``); the caller then looks at the lock again.
        """
        if not self._wait_for_slot or not self._wait_slots.acquire(blocking=False):
            time.sleep(min(timeout, WAIT_SLOT_PAUSE))
            return False
        try:
            return self.run(ops.wait(key, lock_id, timeout))
        finally:
            self._wait_slots.release()

    def ping(self, payload: bytes = b"") -> bytes:
        return self.run(ops.PING, payload)

    def stats(self) -> dict[str, Any]:
        return self.run(ops.STATS)

    def purge(self) -> int:
        """Remove every session of this client's application; return how many."""
        return self.run(ops.PURGE)

    # The index of sessions by user (protocol version 2).

    def bind_user(
        self,
        key: str,
        user_id: str,
        *,
        ip: str | None = None,
        user_agent: str | None = None,
        created: float | None = None,
        last_seen: float | None = None,
        tolerate_old: bool = False,
    ) -> bool:
        """Bind the live session ``key`` to ``user_id``; False if there is no such session.

        ``created`` and ``last_seen`` carry a binding from another server (else: now).
        ``tolerate_old``: False, instead of an error, from a server without the index.
        """
        ip, user_agent = _client_details(user_id, ip, user_agent)
        try:
            return self.run(ops.BIND_USER, key, user_id, ip, user_agent, created, last_seen)
        except ops.ServerTooOld:
            if tolerate_old:
                return False
            raise

    def session_info(self, key: str, *, tolerate_old: bool = False) -> SessionInfo | None:
        """What the index knows of the live session ``key`` (None: no such session).

        ``tolerate_old``: None, instead of an error, from a server without the index.
        """
        try:
            return self.run(ops.SESSION_INFO, key)
        except ops.ServerTooOld:
            if tolerate_old:
                return None
            raise

    def touch_user(self, key: str, *, ip: str | None = None, user_agent: str | None = None) -> bool:
        ip, user_agent = _client_details(None, ip, user_agent)
        return self.run(ops.TOUCH_USER, key, ip, user_agent)

    def unbind_user(self, key: str) -> bool:
        return self.run(ops.UNBIND_USER, key)

    def list_sessions(
        self, *, user_id: str | None = None, offset: int = 0, limit: int = p.MAX_SESSIONS_PAGE
    ) -> tuple[list[SessionInfo], int]:
        """One page (at most ``p.MAX_SESSIONS_PAGE``) of sessions, and their total."""
        if user_id is not None:
            check_user_id(user_id)
        return self.run(ops.LIST_SESSIONS, user_id, offset, limit)

    def user_sessions(self, user_id: str) -> list[SessionInfo]:
        """Every live session of ``user_id``: pages of LIST_SESSIONS, O(their number)."""
        sessions: list[SessionInfo] = []
        for _ in range(MAX_PAGES):
            page, total = self.list_sessions(user_id=user_id, offset=len(sessions))
            sessions += page
            if not page or len(sessions) >= total:
                break
        return sessions


# The asyncio client.


class _Parts(asyncio.Queue[p.Event | BaseException]):
    """The replies to one request answered in parts, as they come (or the link's failure)."""


_Waiter = asyncio.Future[p.Event] | _Parts


class _AsyncLink:
    """One asyncio connection shared by the tasks of one event loop (pipelined by request id)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: p.Connection,
        address: Address,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.address = address
        self.next_id = 0
        # Every request sent and not fully answered; only ``dispatch`` and ``fail`` remove one, so
        # a late reply to a cancelled request is recognised (and dropped).
        self.pending: dict[int, _Waiter] = {}
        self.broken: BaseException | None = None
        self.task: asyncio.Task[None] | None = None

    async def read_event(self) -> p.Event:
        while True:
            event = self.conn.next_event()
            if event is p.NEED_DATA:
                self.conn.receive_data(await self.reader.read(RECV_SIZE))
                continue
            if event is p.CLOSED:
                raise Broken("the server closed the connection")
            return event

    async def dispatch(self) -> None:
        pending = self.pending
        try:
            while True:
                event = await self.read_event()
                request_id: int = event.request_id  # type: ignore[attr-defined]
                waiter = pending.pop(request_id, None)
                if waiter is None:
                    if request_id == 0 and isinstance(event, p.Error):
                        # A connection-level error (the server closes): to each request what it
                        # means to the blocking client's one.
                        self.fail(
                            Broken(f"error {event.code}: {event.message}"),
                            functools.partial(ops.closed_by_server, self.address, event),
                        )
                    else:
                        # Replies are matched by id: one to no request sent means a broken peer.
                        answer = functools.partial(ops.another_request, self.address)
                        self.fail(Broken("a reply to no request"), answer)
                    return
                if isinstance(waiter, _Parts):
                    if type(event) is ops.PART:
                        pending[request_id] = waiter  # more parts follow
                    waiter.put_nowait(event)
                elif not waiter.done():
                    waiter.set_result(event)
        except (OSError, Broken, p.ProtocolError, asyncio.CancelledError) as exc:
            self.fail(exc)

    def fail(self, exc: BaseException, answer: Callable[[], Exception] | None = None) -> None:
        """Close the link; each pending request gets ``answer()``, or ``Broken`` (retried)."""
        self.broken = exc
        for waiter in self.pending.values():
            failure = answer() if answer is not None else Broken(str(exc) or type(exc).__name__)
            if isinstance(waiter, _Parts):
                waiter.put_nowait(failure)
            elif not waiter.done():
                waiter.set_exception(failure)
        self.pending.clear()
        self.writer.close()


class AsyncStateServerClient(_Client):
    """The asyncio twin of ``StateServerClient``: one pipelined connection per event loop."""

    def __init__(
        self,
        address: Address,
        *,
        timeout: float = 10.0,
        application: str = "default",
        secret: str | bytes | None = None,
        max_frame_size: int = p.DEFAULT_MAX_FRAME_SIZE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            address,
            timeout=timeout,
            application=application,
            secret=secret,
            max_frame_size=max_frame_size,
            ssl_context=ssl_context,
        )
        # One link per event loop. Not a WeakKeyDictionary: a link refers to its loop through its
        # transport, so the key would never die; links of closed loops are swept instead.
        self._links: dict[asyncio.AbstractEventLoop, _AsyncLink] = {}
        # The connect in progress per loop: every task that needs the link meanwhile awaits it,
        # so a burst of calls on a new client opens one connection, not one per call.
        self._connecting: dict[asyncio.AbstractEventLoop, asyncio.Task[_AsyncLink]] = {}
        # The WAIT in flight per loop (so per link) and key: (lock id, its task).
        self._waits: dict[asyncio.AbstractEventLoop, dict[str, tuple[int, asyncio.Task[bool]]]] = {}

    async def _connect(self) -> _AsyncLink:
        for loop in [loop for loop in self._links if loop.is_closed()]:
            # asyncio.run() or async_to_sync ended that loop; dropping the link lets the garbage
            # collector close its socket.
            del self._links[loop]
            self._waits.pop(loop, None)
        for loop in [loop for loop in self._connecting if loop.is_closed()]:
            del self._connecting[loop]
        host, port = self.address.host, self.address.port
        tls = self.ssl_context
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host,
                    port,
                    limit=RECV_SIZE,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                    ssl_handshake_timeout=self.timeout if tls is not None else None,
                ),
                self.timeout,
            )
        except ssl.SSLError as exc:
            raise ops.tls_failed(self.address, exc) from exc
        except (OSError, TimeoutError) as exc:
            raise ops.unavailable(self.address, f"cannot connect ({exc})") from exc
        link = _AsyncLink(
            reader,
            writer,
            p.Connection(p.CLIENT, max_frame_size=self.max_frame_size),
            self.address,
        )
        try:
            steps = self._handshake()
            outgoing = next(steps)
            while True:
                if outgoing is not None:
                    writer.write(link.conn.send(outgoing))
                event = await asyncio.wait_for(link.read_event(), self.timeout)
                try:
                    outgoing = steps.send(event)
                except StopIteration:
                    break
        except (OSError, TimeoutError, Broken, p.ProtocolError) as exc:
            writer.close()
            raise ops.handshake_failed(self.address, exc) from exc
        except BaseException:
            writer.close()
            raise
        link.task = asyncio.get_running_loop().create_task(link.dispatch())
        return link

    async def _link(self, loop: asyncio.AbstractEventLoop) -> _AsyncLink:
        """This loop's link, connected if it has none or it broke: one connect at a time."""
        link = self._links.get(loop)
        if link is not None and link.broken is None:
            return link
        connecting = self._connecting.get(loop)
        if connecting is None:
            connecting = self._connecting[loop] = loop.create_task(self._connect_for(loop))
            connecting.add_done_callback(_retrieve)
        # Shielded: a caller cancelled while it waits must not cancel the others' connect.
        return await asyncio.shield(connecting)

    async def _connect_for(self, loop: asyncio.AbstractEventLoop) -> _AsyncLink:
        try:
            link = self._links[loop] = await self._connect()
            return link
        finally:
            self._connecting.pop(loop, None)

    async def _receive(self, link: _AsyncLink, waiter: _Waiter, read_timeout: float) -> p.Event:
        """The next reply for ``waiter``'s request."""
        try:
            if isinstance(waiter, _Parts):
                part = await asyncio.wait_for(waiter.get(), read_timeout)
                if isinstance(part, BaseException):
                    raise part
                return part
            return await asyncio.wait_for(waiter, read_timeout)
        except TimeoutError as exc:
            link.fail(exc)
            raise ops.no_answer(self.address, read_timeout) from exc

    async def run(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Send ``op``'s request (built from ``args``) and return its result."""
        loop = asyncio.get_running_loop()
        link = self._links.get(loop)
        reused = link is not None and link.broken is None
        if not reused:
            link = await self._link(loop)
        assert link is not None
        if op.version > link.conn.version:
            raise ops.too_old(self.address, link.conn.version, op)
        read_timeout = self.timeout + op.hold if op.hold else self.timeout
        for attempt in (1, 2):
            link.next_id = request_id = ops.next_request_id(link.next_id)
            frame = link.conn.send(
                op.make(request_id, *args, **kwargs)
            )  # refused before it is pending
            waiter: _Waiter = _Parts() if op.parts else loop.create_future()
            link.pending[request_id] = waiter
            try:
                link.writer.write(frame)
                reply = await self._receive(link, waiter, read_timeout)
                break
            except (OSError, Broken) as exc:
                link.fail(exc)
                if attempt == 2 or not reused:
                    raise ops.lost(self.address, exc) from exc
                # One transparent reconnect: a kept connection broke while idle (the calls
                # that met the same break share it).
                link = await self._link(loop)
        else:
            raise AssertionError("unreachable")
        while True:
            if isinstance(reply, p.Error):
                raise ops.error(self.address, reply)
            result = op.interpret(self.address, reply)
            if result is not MORE:
                return result
            # A reply in parts: no retry from here on, the parts read so far were consumed.
            try:
                reply = await self._receive(link, waiter, read_timeout)
            except (OSError, Broken) as exc:
                link.fail(exc)
                raise ops.lost(self.address, exc) from exc

    async def call(self, make: Callable[[int], p.Request]) -> p.Event:
        """Send one request (built by ``make(request_id)``) and return its reply."""
        return await self.run(Op(make, ops.raw))

    # Operations: the blocking client's, awaited.

    async def get(self, key: str) -> StateItem | None:
        return await self.run(ops.GET, key)

    async def get_exclusive(self, key: str) -> StateItem | None:
        return await self.run(ops.GET_EXCLUSIVE, key)

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
        return await self.run(ops.SET_AND_RELEASE, key, data, lock_id, timeout, new_item, release)

    async def release(self, key: str, lock_id: int) -> None:
        await self.run(ops.RELEASE, key, lock_id)

    async def remove(self, key: str, lock_id: int | None = None) -> bool:
        return await self.run(ops.REMOVE, key, lock_id)

    async def reset_timeout(self, key: str) -> None:
        await self.run(ops.RESET_TIMEOUT, key)

    async def create_uninitialized(self, key: str, timeout: int) -> bool:
        return await self.run(ops.CREATE_UNINITIALIZED, key, timeout)

    async def purge_expired(
        self, *, on_expired: Callable[[ExpiredItem], None] | None = None, dry_run: bool = False
    ) -> int:
        return await self.run(ops.purge_expired(on_expired, dry_run))

    async def wait(self, key: str, lock_id: int, timeout: float) -> bool:
        """Wait until the server says lock ``lock_id`` ended (True) or ``timeout`` passed.

        The protocol allows one WAIT per key on a connection (a second one ends the first with
        ``released = 0``), and the tasks of a loop share one connection: tasks waiting for the
        same lock share one WAIT. A task that saw another lock id returns at once (allowed:
        the caller looks at the lock again), since one of the two ids is stale.
        """
        loop = asyncio.get_running_loop()
        waits = self._waits.setdefault(loop, {})
        shared = waits.get(key)
        if shared is not None and shared[0] != lock_id:
            return True
        if shared is None:
            task = loop.create_task(self.run(ops.wait(key, lock_id, timeout)))
            waits[key] = shared = (lock_id, task)
            task.add_done_callback(functools.partial(_wait_done, waits, key))
        try:
            # Shielded: a waiter that is cancelled or gives up early leaves the shared WAIT to
            # the others; it ends by itself within its own timeout.
            return await asyncio.wait_for(asyncio.shield(shared[1]), timeout)
        except TimeoutError:
            return False

    async def ping(self, payload: bytes = b"") -> bytes:
        return await self.run(ops.PING, payload)

    async def stats(self) -> dict[str, Any]:
        return await self.run(ops.STATS)

    async def purge(self) -> int:
        """Remove every session of this client's application; return how many."""
        return await self.run(ops.PURGE)

    async def bind_user(
        self,
        key: str,
        user_id: str,
        *,
        ip: str | None = None,
        user_agent: str | None = None,
        created: float | None = None,
        last_seen: float | None = None,
        tolerate_old: bool = False,
    ) -> bool:
        ip, user_agent = _client_details(user_id, ip, user_agent)
        try:
            return await self.run(ops.BIND_USER, key, user_id, ip, user_agent, created, last_seen)
        except ops.ServerTooOld:
            if tolerate_old:
                return False
            raise

    async def session_info(self, key: str, *, tolerate_old: bool = False) -> SessionInfo | None:
        try:
            return await self.run(ops.SESSION_INFO, key)
        except ops.ServerTooOld:
            if tolerate_old:
                return None
            raise

    async def touch_user(
        self, key: str, *, ip: str | None = None, user_agent: str | None = None
    ) -> bool:
        ip, user_agent = _client_details(None, ip, user_agent)
        return await self.run(ops.TOUCH_USER, key, ip, user_agent)

    async def unbind_user(self, key: str) -> bool:
        return await self.run(ops.UNBIND_USER, key)

    async def list_sessions(
        self, *, user_id: str | None = None, offset: int = 0, limit: int = p.MAX_SESSIONS_PAGE
    ) -> tuple[list[SessionInfo], int]:
        if user_id is not None:
            check_user_id(user_id)
        return await self.run(ops.LIST_SESSIONS, user_id, offset, limit)

    async def user_sessions(self, user_id: str) -> list[SessionInfo]:
        sessions: list[SessionInfo] = []
        for _ in range(MAX_PAGES):
            page, total = await self.list_sessions(user_id=user_id, offset=len(sessions))
            sessions += page
            if not page or len(sessions) >= total:
                break
        return sessions

    async def aclose(self) -> None:
        for connecting in list(self._connecting.values()):
            connecting.cancel()
        self._connecting.clear()
        for link in list(self._links.values()):
            link.fail(Broken("closed"))
            if link.task is not None:
                link.task.cancel()
        self._links.clear()
        self._waits.clear()


def _wait_done(
    waits: dict[str, tuple[int, asyncio.Task[bool]]], key: str, task: asyncio.Task[bool]
) -> None:
    """Forget a shared WAIT that ended; read its error, which its waiters may all have left."""
    shared = waits.get(key)
    if shared is not None and shared[1] is task:
        del waits[key]
    if not task.cancelled():
        task.exception()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a shared connect's failure as seen: its callers may all have been cancelled."""
    if not task.cancelled():
        task.exception()
