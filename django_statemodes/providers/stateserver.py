"""The StateServer provider: sessions in a separate state server process (ASP.NET StateServer).

``SESSION_ENGINE = "django_statemodes.backends.stateserver"`` with the server's address in
``STATEMODES_STATE_CONNECTION``. Several ``;``-separated servers partition sessions by rendezvous
hashing (each key always goes to the same server, and adding a server moves only the keys it
takes over); ``STATEMODES_PARTITION_RESOLVER`` names a custom resolver instead (ASP.NET
``partitionResolverType``). Waiting for a lock uses the server's WAIT request: the waiter is
woken the moment the holder releases, never by polling.

A farm that changes: keys are placed by each server's normalised address or ``#name``
(``addresses.placement``), so every web server agrees however it spells an address. A change
rolls out in two steps. First ``STATEMODES_STATE_NEXT_CONNECTION`` names the layout to come: a
session missing on its owner is looked for on its owner there and used where it is. Then
``STATEMODES_STATE_PREVIOUS_CONNECTION`` names the layout left: a session missing on its owner is
looked for there and moved to its owner (``_get_exclusive_steps``). Sessions so move one way
only, which is what lets a request that misses a session twice trust a third look. A server
that times out is marked down for ``STATEMODES_STATE_DOWN_INTERVAL`` seconds: its sessions get a
503 at once, then one request probes it.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, ClassVar, Protocol, TypeVar

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from django_statemodes.conf import conf
from django_statemodes.exceptions import StateServerUnavailable
from django_statemodes.providers.base import (
    ExpiredItem,
    SessionInfo,
    SessionStateProvider,
    StateItem,
)
from django_statemodes.stateserver import operations as ops
from django_statemodes.stateserver.addresses import (
    Address,
    endpoint,
    parse_address,
    parse_connection,
    placement,
)
from django_statemodes.stateserver.client import AsyncStateServerClient, StateServerClient
from django_statemodes.stateserver.tls import client_context

__all__ = ["PartitionResolver", "RendezvousResolver", "StateServerProvider"]

logger = logging.getLogger("django_statemodes")

T = TypeVar("T")

#: One call of a farm operation's steps: the server, the client method's name, its arguments.
FarmCall = tuple[Address, str, tuple[Any, ...], dict[str, Any]]
#: A farm operation written once for the blocking and the asyncio clients: it yields calls and
#: receives their results (the sans-IO shape of ``core.calls``, one level down).
FarmSteps = Generator[FarmCall, Any, T]
NO_KEYWORDS: dict[str, Any] = {}


class PartitionResolver(Protocol):
    """What ``STATEMODES_PARTITION_RESOLVER`` names (ASP.NET ``IPartitionResolver``).

    The class is built with no arguments. ``resolve_partition`` returns the address of the
    server for a session key, in ``STATEMODES_STATE_CONNECTION`` syntax (``tcpip=host:port``).
    ``partitions`` lists every address, so ``purge_sessions`` can reach them all.
    """

    def resolve_partition(self, session_key: str) -> str: ...

    def partitions(self) -> list[str]: ...


def _storable(session_key: Any) -> bool:
    # Keys come from cookies: anything the wire cannot carry is simply a missing session.
    return isinstance(session_key, str) and session_key.isascii() and 0 < len(session_key) <= 255


def _score(name: str, session_key: str) -> int:
    digest = hashlib.blake2b(f"{name}|{session_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class RendezvousResolver:
    """Spread keys over servers by rendezvous (highest random weight) hashing.

    Each server's score for a key hashes its ``placement`` (its ``#name``, or its normalised
    address) with the key: ``localhost:42424`` and ``127.0.0.1:42424`` place every key alike.
    """

    def __init__(self, connection: str) -> None:
        self.addresses = parse_connection(connection)
        self._named = [(placement(address), address) for address in self.addresses]

    def resolve(self, session_key: str) -> Address:
        if len(self._named) == 1:
            return self.addresses[0]
        return max(self._named, key=lambda named: _score(named[0], session_key))[1]

    def all(self) -> list[Address]:
        return list(self.addresses)


class _CustomResolver:
    """Adapt a user's ``PartitionResolver`` to the ``resolve``/``all`` shape used below."""

    def __init__(self, path: str) -> None:
        try:
            self.resolver: PartitionResolver = import_string(path)()
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"STATEMODES_PARTITION_RESOLVER {path!r} cannot be imported: {exc}"
            ) from exc
        self._parsed: dict[str, Address] = {}

    def _parse(self, text: str) -> Address:
        address = self._parsed.get(text)
        if address is None:
            address = self._parsed[text] = parse_address(text)
        return address

    def resolve(self, session_key: str) -> Address:
        return self._parse(self.resolver.resolve_partition(session_key))

    def all(self) -> list[Address]:
        return [self._parse(text) for text in self.resolver.partitions()]


class StateServerProvider(SessionStateProvider):
    """A provider over one or several state servers.

    Options default to the settings: ``connection`` (STATEMODES_STATE_CONNECTION), ``timeout``
    (STATEMODES_STATE_NETWORK_TIMEOUT), ``application`` (STATEMODES_APPLICATION_NAME), ``secret``
    (STATEMODES_STATE_SECRET), ``resolver`` (STATEMODES_PARTITION_RESOLVER), ``previous``
    (STATEMODES_STATE_PREVIOUS_CONNECTION), ``upcoming`` (STATEMODES_STATE_NEXT_CONNECTION),
    ``down_interval`` (STATEMODES_STATE_DOWN_INTERVAL). The blocking clients' pools follow
    STATEMODES_MAX_CONNECTIONS, STATEMODES_CONNECTION_WAIT and
    STATEMODES_CONNECTION_IDLE_TIMEOUT; the asyncio client pipelines one connection per loop.
    """

    #: Each server keeps the index of its own sessions (protocol version 2).
    indexes_users: ClassVar[bool] = True

    settings: ClassVar[frozenset[str]] = frozenset(
        {
            "STATEMODES_STATE_CONNECTION",
            "STATEMODES_STATE_NETWORK_TIMEOUT",
            "STATEMODES_APPLICATION_NAME",
            "STATEMODES_STATE_SECRET",
            "STATEMODES_PARTITION_RESOLVER",
            "STATEMODES_STATE_PREVIOUS_CONNECTION",
            "STATEMODES_STATE_NEXT_CONNECTION",
            "STATEMODES_STATE_DOWN_INTERVAL",
            "STATEMODES_MAX_CONNECTIONS",
            "STATEMODES_CONNECTION_WAIT",
            "STATEMODES_CONNECTION_IDLE_TIMEOUT",
            "STATEMODES_STATE_TLS_CA",
            "STATEMODES_STATE_TLS_CERT",
            "STATEMODES_STATE_TLS_KEY",
        }
    )

    def __init__(
        self,
        *,
        connection: str | None = None,
        timeout: float | None = None,
        application: str | None = None,
        secret: str | None = None,
        resolver: str | None = None,
        previous: str | None = None,
        upcoming: str | None = None,
        down_interval: float | None = None,
    ) -> None:
        super().__init__()
        self.timeout = timeout if timeout is not None else conf.STATEMODES_STATE_NETWORK_TIMEOUT
        self.application = application or conf.STATEMODES_APPLICATION_NAME
        self.secret = secret if secret is not None else conf.STATEMODES_STATE_SECRET
        resolver = resolver if resolver is not None else conf.STATEMODES_PARTITION_RESOLVER
        self.resolver: RendezvousResolver | _CustomResolver
        if resolver:
            self.resolver = _CustomResolver(resolver)
        else:
            self.resolver = RendezvousResolver(connection or conf.STATEMODES_STATE_CONNECTION)
        previous = previous if previous is not None else conf.STATEMODES_STATE_PREVIOUS_CONNECTION
        upcoming = upcoming if upcoming is not None else conf.STATEMODES_STATE_NEXT_CONNECTION
        if previous and upcoming:
            raise ImproperlyConfigured(
                "STATEMODES_STATE_PREVIOUS_CONNECTION and STATEMODES_STATE_NEXT_CONNECTION are "
                "two steps of a farm change: a web server is in one of them (check E067)."
            )
        #: The farm's other layout while it changes (a custom resolver places keys itself):
        #: the layout left, whose sessions are moved here, or the layout to come, whose
        #: sessions are used where they are.
        other = previous or upcoming
        self.other = RendezvousResolver(other) if other and not resolver else None
        #: Whether a session found in the other layout is moved to its owner (``previous``).
        self.moves = bool(previous)
        self.down_interval = (
            down_interval if down_interval is not None else conf.STATEMODES_STATE_DOWN_INTERVAL
        )
        # Servers that timed out: address -> time.monotonic() until which they are refused.
        self._down: dict[Address, float] = {}
        self._probing: set[Address] = set()
        # In a farm change, the server that handed out a lock id, by the lock id's epoch (the
        # state server puts a per-start epoch in its high 32 bits, docs/stateserver-protocol.md):
        # a lock found on a previous owner is waited for and broken there.
        self._lock_servers: dict[int, Address] = {}
        #: Events, for status pages and tests: sessions moved from a previous owner, servers
        #: marked down, calls refused while a server was down.
        self.moved = self.marked_down = self.refused_down = 0
        self._clients: dict[Address, StateServerClient] = {}
        self._aclients: dict[Address, AsyncStateServerClient] = {}
        self._mutex = threading.Lock()
        self._ssl_context: ssl.SSLContext | None = None

    def _options(self, address: Address) -> dict[str, Any]:
        return {
            "timeout": self.timeout,
            "application": self.application,
            "secret": self.secret,
            "ssl_context": self._tls_context() if address.tls else None,
        }

    def _tls_context(self) -> ssl.SSLContext:
        """The client TLS context of ``tls=`` addresses (STATEMODES_STATE_TLS_*), built once."""
        if self._ssl_context is None:
            ca = conf.STATEMODES_STATE_TLS_CA
            if not ca:
                raise ImproperlyConfigured(
                    "STATEMODES_STATE_CONNECTION has a tls= address but STATEMODES_STATE_TLS_CA "
                    "is not set: name the CA file that signed the state server's certificate."
                )
            try:
                self._ssl_context = client_context(
                    ca, conf.STATEMODES_STATE_TLS_CERT, conf.STATEMODES_STATE_TLS_KEY
                )
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise ImproperlyConfigured(
                    f"The state server's TLS files cannot be loaded (STATEMODES_STATE_TLS_CA, "
                    f"STATEMODES_STATE_TLS_CERT, STATEMODES_STATE_TLS_KEY): {exc}"
                ) from exc
        return self._ssl_context

    def client(self, session_key: str) -> StateServerClient:
        """Return the blocking client of the server that holds ``session_key``."""
        return self._client_at(self.resolver.resolve(session_key))

    def _client_at(self, address: Address) -> StateServerClient:
        client = self._clients.get(address)
        if client is None:
            with self._mutex:
                client = self._clients.get(address)
                if client is None:
                    # A bounded pool per server: the process holds at most
                    # STATEMODES_MAX_CONNECTIONS blocking connections to each (a WAIT holds
                    # one for its wait); past STATEMODES_CONNECTION_WAIT, a 503.
                    client = self._clients[address] = StateServerClient(
                        address,
                        **self._options(address),
                        pool_size=conf.STATEMODES_MAX_CONNECTIONS,
                        pool_wait=conf.STATEMODES_CONNECTION_WAIT,
                        idle_timeout=conf.STATEMODES_CONNECTION_IDLE_TIMEOUT,
                    )
        return client

    def aclient(self, session_key: str) -> AsyncStateServerClient:
        return self._aclient_at(self.resolver.resolve(session_key))

    def _aclient_at(self, address: Address) -> AsyncStateServerClient:
        client = self._aclients.get(address)
        if client is None:
            with self._mutex:
                client = self._aclients.setdefault(
                    address, AsyncStateServerClient(address, **self._options(address))
                )
        return client

    # Servers marked down. A hung server (connected, silent) costs each request the network
    # timeout; after the first such timeout its requests are refused at once for
    # ``down_interval`` seconds (a circuit breaker, as HAProxy's health checks mark a server
    # down), then one request probes it with a PING while the others are still refused. A
    # refused connection fails at once by itself: it marks nothing, so a restarted server is
    # used again at once.

    def _admit(self, address: Address) -> bool:
        """Refuse a call to a server marked down; return True if the caller must probe it."""
        until = self._down.get(address)
        if until is None:
            return False
        left = until - time.monotonic()
        if left <= 0:
            with self._mutex:
                if address not in self._probing:
                    self._probing.add(address)
                    return True
        self.refused_down += 1
        raise ops.unavailable(
            address,
            f"marked down for {self.down_interval} s after it did not answer within "
            f"{self.timeout} s ({max(left, 0):.1f} s left; STATEMODES_STATE_DOWN_INTERVAL)",
        )

    def _failed(self, address: Address, exc: StateServerUnavailable) -> None:
        """Mark ``address`` down if ``exc`` is a timeout (a hung server or an unreachable host)."""
        if self.down_interval > 0 and isinstance(exc.__cause__, (TimeoutError, BlockingIOError)):
            now = time.monotonic()
            if self._down.get(address, 0.0) > now:
                return  # requests in flight when it hung time out one by one: one mark
            self._down[address] = now + self.down_interval
            self.marked_down += 1
            logger.warning(
                "Marked the state server at %s down for %s s (STATEMODES_STATE_DOWN_INTERVAL): "
                "its sessions get 503 at once until a probe finds it answering. %s",
                address,
                self.down_interval,
                exc,
            )

    def _probed(self, address: Address, exc: StateServerUnavailable | None) -> None:
        self._probing.discard(address)
        self._down.pop(address, None)
        if exc is None:
            logger.info("The state server at %s answers again.", address)
        else:
            self._failed(address, exc)  # marked again if it timed out again

    def _call(self, address: Address, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the blocking client's ``name`` at ``address``, unless the server is down."""
        if self._down and self._admit(address):
            try:
                self._client_at(address).ping()
            except StateServerUnavailable as exc:
                self._probed(address, exc)
                raise
            except BaseException:
                self._probing.discard(address)
                raise
            self._probed(address, None)
        try:
            return getattr(self._client_at(address), name)(*args, **kwargs)
        except StateServerUnavailable as exc:
            self._failed(address, exc)
            raise

    async def _acall(self, address: Address, name: str, *args: Any, **kwargs: Any) -> Any:
        """``_call`` over the asyncio client."""
        if self._down and self._admit(address):
            try:
                await self._aclient_at(address).ping()
            except StateServerUnavailable as exc:
                self._probed(address, exc)
                raise
            except BaseException:
                self._probing.discard(address)
                raise
            self._probed(address, None)
        try:
            return await getattr(self._aclient_at(address), name)(*args, **kwargs)
        except StateServerUnavailable as exc:
            self._failed(address, exc)
            raise

    def down_servers(self) -> dict[str, float]:
        """Return the servers marked down now, with the seconds left before a probe."""
        now = time.monotonic()
        return {str(address): max(0.0, until - now) for address, until in self._down.items()}

    # A farm that changes (STATEMODES_STATE_NEXT_CONNECTION, then
    # STATEMODES_STATE_PREVIOUS_CONNECTION). Every operation is steps
    # (``FarmSteps``), run by ``_run`` with the blocking client or ``_arun`` with the asyncio one.

    def _run(self, steps: FarmSteps[T]) -> T:
        try:
            address, name, args, kwargs = next(steps)
            while True:
                result = self._call(address, name, *args, **kwargs)
                address, name, args, kwargs = steps.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _arun(self, steps: FarmSteps[T]) -> T:
        try:
            address, name, args, kwargs = next(steps)
            while True:
                result = await self._acall(address, name, *args, **kwargs)
                address, name, args, kwargs = steps.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _owners(self, session_key: str) -> tuple[Address, Address | None]:
        """The key's server, and its server in the other layout if that is another one."""
        owner = self.resolver.resolve(session_key)
        if self.other is None:
            return owner, None
        before = self.other.resolve(session_key)
        return owner, None if endpoint(before) == endpoint(owner) else before

    def _found(self, item: StateItem | None, address: Address) -> StateItem | None:
        """Remember which server handed out ``item``'s lock id (see ``_lock_server``)."""
        if item is not None and item.lock_id:
            if len(self._lock_servers) > 1024:  # epochs change only when a server restarts
                self._lock_servers.clear()
            self._lock_servers[item.lock_id >> 32] = address
        return item

    def _lock_server(self, session_key: str, lock_id: int) -> Address:
        """The server holding lock ``lock_id`` of ``session_key``: its owner, or in a farm
        change the server that handed the lock id out."""
        if self.other is not None:
            address = self._lock_servers.get(lock_id >> 32)
            if address is not None:
                return address
        return self.resolver.resolve(session_key)

    def _get_steps(self, session_key: str) -> FarmSteps[StateItem | None]:
        owner, before = self._owners(session_key)
        item = yield (owner, "get", (session_key,), NO_KEYWORDS)
        if item is None and before is not None:
            item = yield (before, "get", (session_key,), NO_KEYWORDS)
            if self.moves and item is not None and not item.locked and not item.initialize:
                # Moved by reads too, or a session only ever read would stay behind and be
                # lost when the previous layout is dropped. The lock is the move's own, taken
                # and given back at once; a locked session is read where it is, never waited for.
                moved = yield from self._get_exclusive_steps(session_key)
                if moved is not None and not moved.locked:
                    yield (owner, "release", (session_key, moved.lock_id), NO_KEYWORDS)
                    return StateItem(moved.data)
            return self._found(item, before)
        return self._found(item, owner)

    def _get_exclusive_steps(self, session_key: str) -> FarmSteps[StateItem | None]:
        """Lock the session on its owner, or where it is in the other layout.

        With the layout to come (``STATEMODES_STATE_NEXT_CONNECTION``) a session found there is
        locked and used there: it was moved by a web server already on the new layout, and
        moving it back would make it travel both ways. With the layout left
        (``STATEMODES_STATE_PREVIOUS_CONNECTION``) it is moved to its owner first.

        Two web servers may move one session at once, and a web server of either step may
        serve it meanwhile. The old copy's lock decides: only the request that holds it copies
        the session to the owner (as a new item, which the owner refuses if it has the key),
        and the old copy is removed only after the new one exists. So at every moment the
        session is readable somewhere, and, since sessions move only from the layout left to
        the owner, a request that finds neither copy looks at the owner once more: a session
        gone from the old place between its two looks is on the owner. A lock held on the old
        copy is returned as held: the core waits for it there (``_lock_server``) and asks
        again.
        """
        owner, before = self._owners(session_key)
        item = yield (owner, "get_exclusive", (session_key,), NO_KEYWORDS)
        if item is not None or before is None:
            return self._found(item, owner)
        held = yield (before, "get_exclusive", (session_key,), NO_KEYWORDS)
        if not self.moves:
            # The layout to come: nothing moves from there to here, so two misses are final.
            return self._found(held, before)
        if held is None:
            item = yield (owner, "get_exclusive", (session_key,), NO_KEYWORDS)
            return self._found(item, owner)
        if held.locked:
            return self._found(held, before)
        # This request holds the old copy's lock: nobody changes it while it is copied. Its
        # expiry restarts at SESSION_COOKIE_AGE (the wire does not carry an item's timeout); a
        # session with its own set_expiry() gets it back at its next save.
        timeout = django_settings.SESSION_COOKIE_AGE
        if held.initialize:  # a create_uninitialized placeholder stays one (ASP.NET cookieless)
            copied = yield (owner, "create_uninitialized", (session_key, timeout), NO_KEYWORDS)
        else:
            keywords = {"lock_id": None, "timeout": timeout, "new_item": True}
            copied = yield (owner, "set_and_release", (session_key, held.data), keywords)
        if not copied:
            # The owner has the key already (only after a broken lock): its copy is the
            # current one; the old copy is left as it was, never deleted unread.
            yield (before, "release", (session_key, held.lock_id), NO_KEYWORDS)
        # The lock on the owner: this request's, or another's that took the copy first (the
        # core then waits for it on the owner).
        if copied and conf.STATEMODES_USER_INDEX:
            yield from self._carry_binding(session_key, before, owner)
        item = yield (owner, "get_exclusive", (session_key,), NO_KEYWORDS)
        if copied:
            yield (before, "remove", (session_key, held.lock_id), NO_KEYWORDS)
            self.moved += 1
        return self._found(item, owner)

    def _carry_binding(self, session_key: str, before: Address, owner: Address) -> FarmSteps[None]:
        """Bind the moved copy as the old one was, times included, before the old one goes.

        Servers without the index (an upgrade in progress) carry nothing, and move as before.
        """
        tolerant = {"tolerate_old": True}
        info = yield (before, "session_info", (session_key,), tolerant)
        if info is not None and info.user_id:
            keywords = {
                "ip": info.ip,
                "user_agent": info.user_agent,
                "created": info.created,
                "last_seen": info.last_seen,
                **tolerant,
            }
            yield (owner, "bind_user", (session_key, info.user_id), keywords)

    def _set_steps(self, session_key: str, data: Any, keywords: dict[str, Any]) -> FarmSteps[bool]:
        owner, before = self._owners(session_key)
        lock_id = keywords["lock_id"]
        if lock_id is not None and not keywords["new_item"]:
            server = self._lock_server(session_key, lock_id)
            return bool((yield (server, "set_and_release", (session_key, data), keywords)))
        stored = yield (owner, "set_and_release", (session_key, data), keywords)
        if not stored and before is not None and not keywords["new_item"]:
            # An unlocked update (a script's) of a session not moved yet: where it is.
            stored = yield (before, "set_and_release", (session_key, data), keywords)
        return bool(stored)

    def _remove_steps(self, session_key: str, lock_id: int | None) -> FarmSteps[bool]:
        owner, before = self._owners(session_key)
        if lock_id is not None:
            server = self._lock_server(session_key, lock_id)
            return bool((yield (server, "remove", (session_key, lock_id), NO_KEYWORDS)))
        removed = yield (owner, "remove", (session_key, None), NO_KEYWORDS)
        if before is not None:  # wherever it is: a flushed session must not come back
            removed = (yield (before, "remove", (session_key, None), NO_KEYWORDS)) or removed
        return bool(removed)

    # The index of sessions by user: each server indexes the sessions it holds. A session's
    # entry is on its server (found like the session); a user's sessions are asked of every
    # server: one LIST_SESSIONS round trip each, costing O(that user's sessions) there.

    def _bind_steps(self, name: str, session_key: str, keywords: dict[str, Any]) -> FarmSteps[bool]:
        owner, before = self._owners(session_key)
        done = yield (owner, name, (session_key,), keywords)
        if not done and before is not None:  # not moved yet: where it is
            done = yield (before, name, (session_key,), keywords)
        return bool(done)

    def _user_steps(self, user_id: str) -> FarmSteps[list[SessionInfo]]:
        sessions: dict[str, SessionInfo] = {}
        for address in self._all():
            found = yield (address, "user_sessions", (user_id,), NO_KEYWORDS)
            for info in found:
                sessions.setdefault(info.session_key, info)
        return list(sessions.values())

    def _list_steps(
        self, user_id: str | None, offset: int, limit: int
    ) -> FarmSteps[tuple[list[SessionInfo], int]]:
        # Servers in a fixed order, as one list: each is asked for the part of the page it
        # holds (or, past the page, its total only). One round trip per server.
        page: list[SessionInfo] = []
        before = 0  # sessions on the servers already asked
        offset, limit = max(0, offset), max(0, limit)
        for address in self._all():
            keywords = {
                "user_id": user_id,
                "offset": max(0, offset - before),
                "limit": limit - len(page),
            }
            found, total = yield (address, "list_sessions", (), keywords)
            page += found[: limit - len(page)]
            before += total
        return page, before

    def bind_user(
        self, session_key: str, user_id: str, *, ip: str | None, user_agent: str | None
    ) -> bool:
        if not _storable(session_key):
            return False
        keywords = {"user_id": user_id, "ip": ip, "user_agent": user_agent}
        return self._run(self._bind_steps("bind_user", session_key, keywords))

    def touch_user(self, session_key: str, *, ip: str | None, user_agent: str | None) -> None:
        if _storable(session_key):
            keywords = {"ip": ip, "user_agent": user_agent}
            self._run(self._bind_steps("touch_user", session_key, keywords))

    def unbind_user(self, session_key: str) -> None:
        if _storable(session_key):
            self._run(self._bind_steps("unbind_user", session_key, NO_KEYWORDS))

    def user_sessions(self, user_id: str) -> list[SessionInfo]:
        return self._run(self._user_steps(user_id))

    def list_sessions(
        self, *, user_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SessionInfo], int]:
        return self._run(self._list_steps(user_id, offset, limit))

    async def abind_user(
        self, session_key: str, user_id: str, *, ip: str | None, user_agent: str | None
    ) -> bool:
        if not _storable(session_key):
            return False
        keywords = {"user_id": user_id, "ip": ip, "user_agent": user_agent}
        return await self._arun(self._bind_steps("bind_user", session_key, keywords))

    async def atouch_user(
        self, session_key: str, *, ip: str | None, user_agent: str | None
    ) -> None:
        if _storable(session_key):
            keywords = {"ip": ip, "user_agent": user_agent}
            await self._arun(self._bind_steps("touch_user", session_key, keywords))

    async def aunbind_user(self, session_key: str) -> None:
        if _storable(session_key):
            await self._arun(self._bind_steps("unbind_user", session_key, NO_KEYWORDS))

    async def auser_sessions(self, user_id: str) -> list[SessionInfo]:
        return await self._arun(self._user_steps(user_id))

    async def alist_sessions(
        self, *, user_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SessionInfo], int]:
        return await self._arun(self._list_steps(user_id, offset, limit))

    def _all(self) -> list[Address]:
        """Every server, of both layouts in a farm change, each once."""
        servers = {endpoint(a): a for a in self.resolver.all()}
        if self.other is not None:
            for address in self.other.all():
                servers.setdefault(endpoint(address), address)
        return list(servers.values())

    # The contract: one round trip each outside a farm change.

    def get(self, session_key: str) -> StateItem | None:
        if not _storable(session_key):
            return None
        if self.other is None:
            item: StateItem | None = self._call(
                self.resolver.resolve(session_key), "get", session_key
            )
            return item
        return self._run(self._get_steps(session_key))

    def get_exclusive(self, session_key: str) -> StateItem | None:
        if not _storable(session_key):
            return None
        if self.other is None:
            address = self.resolver.resolve(session_key)
            item: StateItem | None = self._call(address, "get_exclusive", session_key)
            return item
        return self._run(self._get_exclusive_steps(session_key))

    def set_and_release(
        self,
        session_key: str,
        data: Any,
        *,
        lock_id: int | None,
        timeout: int,
        new_item: bool = False,
        keep_lock: bool = False,
    ) -> bool:
        if not _storable(session_key):
            return False
        keywords = {
            "lock_id": lock_id,
            "timeout": timeout,
            "new_item": new_item,
            "release": not keep_lock,
        }
        if self.other is None:
            address = self.resolver.resolve(session_key)
            stored: bool = self._call(address, "set_and_release", session_key, data, **keywords)
            return stored
        return self._run(self._set_steps(session_key, data, keywords))

    def release(self, session_key: str, lock_id: int) -> None:
        self._call(self._lock_server(session_key, lock_id), "release", session_key, lock_id)

    def remove(self, session_key: str, lock_id: int | None = None) -> bool:
        if not _storable(session_key):
            return False
        return self._run(self._remove_steps(session_key, lock_id))

    def create_uninitialized(self, session_key: str, timeout: int) -> bool:
        if not _storable(session_key):
            return False
        address = self.resolver.resolve(session_key)
        created: bool = self._call(address, "create_uninitialized", session_key, timeout)
        return created

    def purge_expired(
        self,
        *,
        on_expired: Callable[[ExpiredItem], None] | None = None,
        dry_run: bool = False,
        batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        total = 0
        for address in self._all():  # each server purges in one step: one batch each
            total += self._call(address, "purge_expired", on_expired=on_expired, dry_run=dry_run)
            if on_batch is not None:
                on_batch(total)
        return total

    def wait_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        # The server answers WAIT when the lock ends: an immediate hand-off, no polling. The
        # wait holds one pooled connection; the core bounds a session's waiting threads.
        self._call(self._lock_server(session_key, lock_id), "wait", session_key, lock_id, timeout)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Return each server's statistics, by address."""
        return {str(a): self._call(a, "stats") for a in self._all()}

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self._aclients.clear()

    # Async twins over the asyncio client: the same steps.

    async def aget(self, session_key: str) -> StateItem | None:
        if not _storable(session_key):
            return None
        if self.other is None:
            address = self.resolver.resolve(session_key)
            item: StateItem | None = await self._acall(address, "get", session_key)
            return item
        return await self._arun(self._get_steps(session_key))

    async def aget_exclusive(self, session_key: str) -> StateItem | None:
        if not _storable(session_key):
            return None
        if self.other is None:
            address = self.resolver.resolve(session_key)
            item: StateItem | None = await self._acall(address, "get_exclusive", session_key)
            return item
        return await self._arun(self._get_exclusive_steps(session_key))

    async def aset_and_release(
        self,
        session_key: str,
        data: Any,
        *,
        lock_id: int | None,
        timeout: int,
        new_item: bool = False,
        keep_lock: bool = False,
    ) -> bool:
        if not _storable(session_key):
            return False
        keywords = {
            "lock_id": lock_id,
            "timeout": timeout,
            "new_item": new_item,
            "release": not keep_lock,
        }
        if self.other is None:
            address = self.resolver.resolve(session_key)
            stored: bool = await self._acall(
                address, "set_and_release", session_key, data, **keywords
            )
            return stored
        return await self._arun(self._set_steps(session_key, data, keywords))

    async def arelease(self, session_key: str, lock_id: int) -> None:
        address = self._lock_server(session_key, lock_id)
        await self._acall(address, "release", session_key, lock_id)

    async def aremove(self, session_key: str, lock_id: int | None = None) -> bool:
        if not _storable(session_key):
            return False
        return await self._arun(self._remove_steps(session_key, lock_id))

    async def await_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        address = self._lock_server(session_key, lock_id)
        await self._acall(address, "wait", session_key, lock_id, timeout)
