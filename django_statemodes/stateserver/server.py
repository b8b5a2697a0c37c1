"""The state server daemon (ASP.NET's aspnet_state.exe): asyncio over ``MemoryStore``.

``ServerState`` holds the sessions (one ``MemoryStore`` per application namespace), the lock
owners and the lock queues; ``StateServer`` runs the listener, the periodic tasks and shutdown;
``_Peer`` adapts one TCP connection to ``protocol.Connection``. Everything runs on one event loop
thread, so the stores are only ever touched from that thread.

Beyond ASP.NET: locks held by a connection are released when it drops (a web process killed
mid-request blocks nobody); waiters are woken at once (WAIT); a shared secret is proven by HMAC;
``--snapshot`` keeps the sessions over a restart; ``--max-memory`` bounds everything clients
can make the server hold (payloads, keys, per-item and per-application overhead), refusing writes
past it as Redis's ``noeviction`` policy does.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import hmac
import ipaddress
import logging
import os
import resource
import secrets
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from django_statemodes.items import ExpiredItem, SessionInfo, StateItem
from django_statemodes.memory import Binding, Budget, MemoryStore

from . import protocol as p
from .appendonly import (
    DEFAULT_REWRITE_SIZE,
    FSYNC_INTERVAL,
    AppendOnlyLog,
    log_path,
    next_log_path,
    restorable,
    rewrite,
    switch,
)
from .appendonly import load as load_appendonly
from .errors import StoreFull
from .snapshot import (
    BindingRecord,
    Record,
    check_snapshot_path,
    read_snapshot_file,
    write_snapshot,
)
from .tls import server_context

__all__ = [
    "LOOPS",
    "ServerConfig",
    "ServerState",
    "StateServer",
    "is_loopback",
    "loop_factory",
    "run",
]

logger = logging.getLogger("django_statemodes.stateserver")

DEFAULT_HOST = "127.0.0.1"
# Expired sessions sent back per EXPIRED frame: far below the frame limit.
EXPIRED_BATCH_BYTES = 1024 * 1024
# Seconds of operation counts kept for the operations/s figure.
RATE_WINDOW = 10
# Backpressure (Redis's client-output-buffer-limit, as a pause rather than a disconnect): a
# connection stops being read while more than WRITE_HIGH_WATER bytes of its replies are unsent,
# and is read again below WRITE_LOW_WATER. Replies are coalesced into writes of up to
# WRITE_COALESCE bytes. So one connection holds at most about WRITE_HIGH_WATER + WRITE_COALESCE
# + one reply (a frame, at most --max-frame-size) of output, however much it pipelines.
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
WRITE_COALESCE = 64 * 1024
# Descriptors kept free below RLIMIT_NOFILE for the listening sockets, the log, the snapshot, the
# event loop's own: the default --max-connections is the soft limit minus this (Redis reserves 32
# below maxclients the same way), so accept() does not run out of descriptors.
NOFILE_MARGIN = 64
# Redis's default maxclients: the cap when the descriptor limit is higher.
DEFAULT_MAX_CONNECTIONS = 10000
# The listen backlog (Redis's tcp-backlog default; the kernel caps it at net.core.somaxconn):
# asyncio's 100 let a burst of connects (every web worker reconnecting after a restart, or a
# flood) wait for the kernel's SYN-ACK retries, and drop the ones still waiting after them.
LISTEN_BACKLOG = 511
# Connections refused over --max-connections, and accept() failures (EMFILE), are logged at most
# once per this many seconds, with a count: never a line per event.
LIMIT_LOG_INTERVAL = 10.0
# The memory budget (Redis's maxmemory counts everything the server allocates, not only values;
# with its noeviction policy a write past it gets an OOM error, as ours gets STORE_FULL). Each
# item is charged its payload, its key's length and ITEM_OVERHEAD; each application
# APPLICATION_OVERHEAD and its name's length.
#
# ITEM_OVERHEAD, measured (CPython 3.11, x86-64): the RSS slope of 100,000 items put in one
# MemoryStore (keys and payloads made beforehand, their str/bytes headers added back: 49 and 33
# bytes) is 271 bytes per placeholder when all share one timeout and 542 when each has its own
# timeout (a queue dict of its own: the worst case a client can choose), 304 and 575 with a
# payload. sys.getsizeof agrees: the _Item (slots) is 112 bytes, its entries in the items and
# queue dicts about 50 each, a one-item queue dict 232. A lock adds an entry in ``owners`` (with
# its (application, key) tuple) and in the peer's ``held``: about 200 bytes, estimated with
# sys.getsizeof. 575 + 200, rounded up for the dicts' growth steps: 800.
ITEM_OVERHEAD = 800
# APPLICATION_OVERHEAD, measured the same way: 20,000 applications with one placeholder each
# grew RSS by 1,383 bytes per application, of which about 540 is the item: about 850 for the
# MemoryStore, its dicts, mutex and on_unlock closure and its entry in ``stores``, rounded up.
APPLICATION_OVERHEAD = 1536
# WAITER_OVERHEAD, measured the same way: 5,000 WAITs queued on 5,000 locked sessions grew RSS by
# 969 bytes each under uvloop (704 under asyncio): the _Waiter, its timer, its entries in the
# queue and in the peer's ``waiting``; rounded up. A WAIT past --max-memory is refused.
WAITER_OVERHEAD = 1024
# Each connection is charged what its buffers hold at the moment (unparsed input, unsent
# output), as Redis counts client buffers in used_memory; a connection is never refused for it
# (--max-connections bounds them), writes are. Its fixed cost (1,000 idle authenticated
# connections grew RSS by 1,872 bytes each under uvloop, 2,986 under asyncio) is not charged:
# --max-connections bounds it, and a budget of a few KB would otherwise be taken by one client.
# --max-timeout's default: longer sliding timeouts from a client are capped to it, so a
# placeholder cannot be kept for 136 years (the protocol's u32 maximum).
DEFAULT_MAX_TIMEOUT = 7 * 24 * 3600
# --max-applications's default: application names (stores) held at once.
DEFAULT_MAX_APPLICATIONS = 1000


def default_max_connections() -> int:
    """``--max-connections``'s default: the soft RLIMIT_NOFILE minus a margin, at most 10,000."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, soft - NOFILE_MARGIN))


#: Where a container's memory limit is read (cgroup v2, then v1); "max" or a huge v1 value
#: means none.
CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def default_max_memory() -> int:
    """``--max-memory``'s default: half of the memory of this machine or of its container.

    Half leaves room for the interpreter, a snapshot's serialized copy and the kernel: a state
    server that the kernel's OOM killer ends loses every session, where one that refuses writes
    (STORE_FULL, the clients' 503) loses none.
    """
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in CGROUP_MEMORY_LIMITS:
        try:
            with open(path) as limit:
                text = limit.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return max(1, total // 2)


def is_loopback(host: str) -> bool:
    """Return True for localhost and loopback addresses (the only default-allowed binds)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServerConfig:
    """What the command line sets; defaults match ``python -m django_statemodes.stateserver``."""

    host: str = DEFAULT_HOST
    port: int = 42424
    allow_remote: bool = False
    secret: bytes | None = None
    snapshot: str | None = None
    snapshot_interval: float = 60.0
    max_memory: int | None = None
    max_timeout: int = DEFAULT_MAX_TIMEOUT
    max_applications: int = DEFAULT_MAX_APPLICATIONS
    purge_interval: float = 60.0
    max_frame_size: int = p.DEFAULT_MAX_FRAME_SIZE
    handshake_timeout: float = 5.0
    frame_timeout: float = 30.0
    loop: str = "auto"
    max_connections: int | None = None  # None: default_max_connections()
    idle_timeout: float = 300.0  # 0: never
    #: --appendonly: every acknowledged write logged to SNAPSHOT.aof (Redis's appendonly yes).
    appendonly: bool = False
    appendonly_rewrite_size: int = DEFAULT_REWRITE_SIZE
    # TLS (--tls-cert, --tls-key, --tls-client-ca) and --insecure-allow-plaintext.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    insecure_allow_plaintext: bool = False
    #: --app-secrets: an application's own secret. A connection proving one may use that
    #: application only (Redis ACL users, one per site); other names need the global secret.
    app_secrets: dict[str, bytes] = field(default_factory=dict)
    #: --protocol-version: the highest version spoken (an older server, for trying clients).
    protocol_version: int = p.PROTOCOL_VERSION

    @property
    def auth_required(self) -> bool:
        return self.secret is not None or bool(self.app_secrets)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of ``--tls-cert``, or None; ValueError naming the flag if it fails."""
        if not self.tls_cert:
            return None
        try:
            return server_context(self.tls_cert, self.tls_key, self.tls_client_ca)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ValueError(
                f"cannot load the TLS files (--tls-cert {self.tls_cert}"
                + (f", --tls-key {self.tls_key}" if self.tls_key else "")
                + (f", --tls-client-ca {self.tls_client_ca}" if self.tls_client_ca else "")
                + f"): {exc}"
            ) from None

    def validate(self) -> None:
        """Raise ValueError with the flag to use when the configuration is unsafe or wrong."""
        if not is_loopback(self.host) and not self.allow_remote:
            raise ValueError(
                f"refusing to listen on {self.host}: only loopback addresses are allowed "
                "without --allow-remote (ASP.NET AllowRemoteConnection)"
            )
        if self.allow_remote and not self.auth_required:
            raise ValueError(
                "--allow-remote needs a shared secret: pass --secret-file PATH or set "
                "STATEMODES_STATE_SECRET in the environment"
            )
        if self.max_memory is not None and self.max_memory <= 0:
            raise ValueError("--max-memory must be a positive number of bytes")
        if self.max_timeout <= 0:
            raise ValueError("--max-timeout must be a positive number of seconds")
        if self.max_applications <= 0:
            raise ValueError("--max-applications must be a positive number")
        if self.max_connections is not None and self.max_connections <= 0:
            raise ValueError("--max-connections must be a positive number")
        if self.handshake_timeout <= 0:
            raise ValueError("--handshake-timeout must be a positive number of seconds")
        if self.idle_timeout < 0:
            raise ValueError("--idle-timeout must be 0 (never) or a positive number of seconds")
        if not p.MIN_PROTOCOL_VERSION <= self.protocol_version <= p.PROTOCOL_VERSION:
            raise ValueError(
                f"--protocol-version must be {p.MIN_PROTOCOL_VERSION} to {p.PROTOCOL_VERSION}"
            )
        loop_factory(self.loop)  # raises for an unknown loop or a missing uvloop
        if self.appendonly and not self.snapshot:
            raise ValueError(
                "--appendonly needs --snapshot PATH: the log is kept beside it, as PATH.aof, "
                "and rewritten into it"
            )
        if self.appendonly_rewrite_size <= 0:
            raise ValueError("--appendonly-rewrite-size must be a positive number of bytes")
        if (self.tls_key or self.tls_client_ca) and not self.tls_cert:
            raise ValueError(
                "--tls-key and --tls-client-ca need --tls-cert (the server's certificate)"
            )
        if not is_loopback(self.host) and not self.tls_cert and not self.insecure_allow_plaintext:
            # Sessions, PURGE and the handshake would cross the network in clear: a relay reads
            # and rewrites them (Redis's tls-port, PostgreSQL's hostssl for the same reason).
            raise ValueError(
                f"refusing to listen on {self.host} without TLS: session data would cross the "
                "network in clear text. Give --tls-cert and --tls-key (see the state server "
                "documentation, 'TLS and per-application secrets'), or pass "
                "--insecure-allow-plaintext on a network you trust"
            )


LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return what builds the event loop ``--loop name`` asks for (None: asyncio's own).

    ``auto`` takes uvloop when it is installed (``pip install django-statemodes[uvloop]``): it
    spends 15-25 % less CPU per request than asyncio's default loop.
    """
    if name not in LOOPS:
        raise ValueError(f"--loop must be one of {', '.join(LOOPS)}, not {name!r}")
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise ValueError(
                "--loop uvloop needs the uvloop package: pip install 'django-statemodes[uvloop]'"
            ) from None
        return None
    return uvloop.new_event_loop


@dataclass(slots=True)
class _Purging:
    """A PURGE_EXPIRED with data in progress: its store, request and count so far."""

    store: MemoryStore
    request_id: int
    count: int = 0


class _Waiter:
    __slots__ = ("peer", "request_id", "handle")

    def __init__(self, peer: _Peer, request_id: int) -> None:
        self.peer = peer
        self.request_id = request_id
        self.handle: asyncio.TimerHandle | None = None


class ServerState:
    """Sessions per application, lock owners and lock queues; no I/O.

    Lock ids on the wire carry a per-start epoch in their high 32 bits, so a lock id handed out
    before a restart never matches a lock taken after it (the snapshot does not keep locks).
    """

    def __init__(
        self,
        *,
        max_memory: int | None = None,
        epoch: int | None = None,
        max_applications: int = DEFAULT_MAX_APPLICATIONS,
    ) -> None:
        self.max_memory = max_memory
        self.max_applications = max_applications
        # One budget for every store, so a write checks one counter (not a sum over stores).
        self.budget = Budget(max_memory)
        # Only applications holding items: a store is freed when its last item goes.
        self.stores: dict[str, MemoryStore] = {}
        # What requests of an application without a store read: always empty, never written
        # (writes open a store first).
        self.empty = MemoryStore(max_bytes=0)
        self.epoch = epoch if epoch is not None else secrets.randbelow((1 << 31) - 1) + 1
        self._epoch_base = self.epoch << 32
        # (application, key) -> the peer holding its lock, and the peer's lock ids.
        self.owners: dict[tuple[str, str], _Peer] = {}
        self.waiters: dict[tuple[str, str], list[_Waiter]] = {}
        self.operations = 0
        self.started = time.time()
        # Connections closed at once because --max-connections were open (Redis's maxclients).
        self.refused_connections = 0

    def store(self, application: str, *, bounded: bool = True) -> MemoryStore:
        """Return the application's store, opened if needed.

        A new one is charged APPLICATION_OVERHEAD plus the name; it raises StoreFull past
        ``--max-applications`` or ``--max-memory`` (``bounded=False``: a snapshot's restore,
        which must not drop sessions it already holds).
        """
        store = self.stores.get(application)
        if store is not None:
            return store
        if bounded:
            if len(self.stores) >= self.max_applications:
                raise StoreFull(
                    f"{len(self.stores)} applications hold sessions (--max-applications "
                    f"{self.max_applications}); application {application[:64]!r} cannot add one"
                )
            self.budget.check(APPLICATION_OVERHEAD + len(application))

        def on_unlock(key: str) -> None:
            self._unlocked(application, key)

        store = self.stores[application] = MemoryStore(
            on_unlock=on_unlock, budget=self.budget, item_overhead=ITEM_OVERHEAD
        )
        self.budget.used += APPLICATION_OVERHEAD + len(application)
        return store

    def free_if_empty(self, application: str) -> None:
        """Forget an application whose last item went, and give back what it was charged."""
        store = self.stores.get(application)
        if store is not None and not len(store):
            del self.stores[application]
            self.budget.used -= APPLICATION_OVERHEAD + len(application)

    @property
    def bytes(self) -> int:
        """Bytes charged against --max-memory: items and applications."""
        return self.budget.used

    @property
    def sessions(self) -> int:
        return sum(len(store) for store in self.stores.values())

    # Lock ids between the wire and the store.

    def wire_lock(self, local: int) -> int:
        return self._epoch_base | local

    def local_lock(self, wire: int | None) -> int | None:
        if wire is None:
            return None
        if wire >> 32 != self.epoch:
            return -1  # from before a restart: matches no lock
        return wire & 0xFFFFFFFF

    # Locks and waiters.

    def _unlocked(self, application: str, key: str) -> None:
        slot = (application, key)
        owner = self.owners.pop(slot, None)
        if owner is not None:
            owner.held.pop(slot, None)
        waiters = self.waiters.pop(slot, None)
        if waiters:
            self.budget.used -= WAITER_OVERHEAD * len(waiters)
            for waiter in waiters:
                if waiter.handle is not None:
                    waiter.handle.cancel()
                if waiter.peer.waiting.get(slot) is waiter:
                    del waiter.peer.waiting[slot]
                waiter.peer.answer(p.Released(waiter.request_id, True))

    def locked(self, peer: _Peer, application: str, key: str, local: int) -> None:
        slot = (application, key)
        self.owners[slot] = peer
        peer.held[slot] = local

    def add_waiter(self, slot: tuple[str, str], waiter: _Waiter) -> None:
        """Queue ``waiter``, charged WAITER_OVERHEAD; StoreFull past --max-memory."""
        self.budget.check(WAITER_OVERHEAD)
        self.budget.used += WAITER_OVERHEAD
        self.waiters.setdefault(slot, []).append(waiter)

    def drop_waiter(self, slot: tuple[str, str], waiter: _Waiter) -> None:
        waiters = self.waiters.get(slot)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
            self.budget.used -= WAITER_OVERHEAD
            if not waiters:
                del self.waiters[slot]

    def disconnected(self, peer: _Peer) -> int:
        """Release the locks ``peer`` held and forget its waiters; return how many locks."""
        released = 0
        for (application, key), local in list(peer.held.items()):
            store = self.stores.get(application)
            if store is not None and store.holds(key, local):
                store.release(key, local)  # wakes the next waiter through on_unlock
                released += 1
        peer.held.clear()
        for slot, waiter in list(peer.waiting.items()):
            if waiter.handle is not None:
                waiter.handle.cancel()
            self.drop_waiter(slot, waiter)
        peer.waiting.clear()
        return released

    def purge_all_expired(self) -> int:
        purged = 0
        for application, store in list(self.stores.items()):
            purged += store.purge_expired()
            self.free_if_empty(application)
        return purged

    # Snapshots.

    def records(self) -> list[Record]:
        return [
            (application, key, data, timeout, seconds_left)
            for application, store in self.stores.items()
            for key, data, timeout, seconds_left in store.snapshot()
        ]

    def binding_records(self) -> list[BindingRecord]:
        return [
            (application, key, binding)
            for application, store in self.stores.items()
            for key, binding in store.bindings()
        ]

    def restore(
        self,
        snapshot: dict[str, list[tuple[str, Any, int, float]]],
        bindings: dict[str, dict[str, Binding]] | None = None,
    ) -> int:
        restored = 0
        for application, items in snapshot.items():
            store = self.store(application, bounded=False)
            restored += store.restore(items)
            if bindings and application in bindings:
                store.restore_bindings(list(bindings[application].items()))
            self.free_if_empty(application)
        return restored


def _item(request_id: int, item: StateItem, state: ServerState) -> p.Item:
    return p.Item(
        request_id,
        item.data,
        item.locked,
        state.wire_lock(item.lock_id),
        item.lock_age,
        0,  # the reply's timeout field is reserved: clients ignore it
        item.initialize,
    )


class _Peer(asyncio.Protocol):
    """One client connection: bytes through ``protocol.Connection`` into ``ServerState``."""

    def __init__(self, server: StateServer) -> None:
        self.server = server
        self.state = server.state
        self.config = server.config
        self.conn = p.Connection(p.SERVER, max_frame_size=server.config.max_frame_size)
        self.transport: asyncio.Transport | None = None
        self.application = ""
        # Authenticated with an --app-secrets secret: STATS shows its application only.
        self.tenant = False
        self.nonce = secrets.token_bytes(p.NONCE_SIZE)
        self.held: dict[tuple[str, str], int] = {}
        self.waiting: dict[tuple[str, str], _Waiter] = {}
        self._out: list[bytes] | None = None
        self._out_size = 0
        self._timer: asyncio.TimerHandle | None = None
        self.peername: Any = None
        # Backpressure: True while the transport's unsent output is over WRITE_HIGH_WATER; no
        # request is parsed then, so no reply is built.
        self._paused = False
        self._refused = False  # closed at once: over --max-connections
        self._idle: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        # Bytes charged to --max-memory for this connection's buffers.
        self._charged = 0
        # A PURGE_EXPIRED streaming its sessions: later requests wait for its RESULT.
        self._purging: _Purging | None = None
        # Replies produced while paused outside a read (a WAIT's RELEASED, sent when another
        # connection releases the lock or the WAIT's timer fires): sent on resume_writing.
        # At most one per WAIT this connection has queued.
        self._deferred: list[bytes] = []

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        self.peername = transport.get_extra_info("peername")
        server = self.server
        if len(server.peers) >= server.max_connections:
            # Redis's maxclients: the excess is closed at once, before any byte is sent or read,
            # so a flood can never take the descriptors legitimate clients need. Counted, and
            # logged at most once per LIMIT_LOG_INTERVAL.
            self._refused = True
            self.state.refused_connections += 1
            server.note_refused()
            transport.close()
            return
        server.peers.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        welcome = p.Welcome(
            max_version=self.config.protocol_version,
            nonce=self.nonce,
            auth_required=self.config.auth_required,
        )
        transport.write(self.conn.send(welcome))
        self._charge()
        self._timer = asyncio.get_running_loop().call_later(
            self.config.handshake_timeout, self._timed_out, "no handshake"
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self.server.peers.discard(self)
        self.state.budget.used -= self._charged
        self._charged = 0
        self._purging = None
        if self._timer is not None:
            self._timer.cancel()
        if self._idle is not None:
            self._idle.cancel()
        released = self.state.disconnected(self)
        if released:
            logger.info(
                "Connection %s dropped; released %d lock(s) it held", self.peername, released
            )

    def pause_writing(self) -> None:
        # A client that does not read its replies stops being read, and its requests already
        # received stop being parsed: its unsent output stays near WRITE_HIGH_WATER.
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            if self._deferred:
                self.transport.write(b"".join(self._deferred))
                self._deferred.clear()
            self._charge()
            if self._paused:
                return  # the deferred replies filled the buffer again
            if self._purging is not None:
                # The next batch of a PURGE_EXPIRED; reading resumes once it is done.
                asyncio.get_running_loop().call_soon(self._purge_batches)
                return
            self.transport.resume_reading()
            if self.conn.buffered:
                # Requests received before the pause; parsed on the next loop pass, not inside
                # the transport's write callback.
                asyncio.get_running_loop().call_soon(self._process)

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        try:
            self.conn.receive_data(data)
        except p.ProtocolError as exc:
            self._refuse(exc.code, str(exc))
            return
        self._process()

    def _process(self) -> None:
        """Handle the complete requests received, one at a time, until paused or out of them."""
        conn = self.conn
        out: list[bytes] = []
        self._out = out
        self._out_size = 0
        try:
            while not self._paused and self._purging is None:
                event = conn.next_event()
                if event is p.NEED_DATA or event is p.CLOSED:
                    break
                self.handle(event)
        except p.ProtocolError as exc:
            self._refuse(exc.code, str(exc))
        finally:
            self._out = None
            if out and self.transport is not None:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        self._charge()
        if self._paused:
            return  # not a slow sender: the frame timer waits for the resume
        if conn.buffered or self._timer is not None:
            self._watch_partial_frame()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def _charge(self) -> None:
        """Charge --max-memory what this connection holds now (Redis's client buffers)."""
        transport = self.transport
        held = self.conn.buffered + sum(map(len, self._deferred))
        if transport is not None:
            held += transport.get_write_buffer_size()
        self.state.budget.used += held - self._charged
        self._charged = held

    # Output

    def answer(self, event: p.Event) -> None:
        """Queue a reply (sent at the end of the current read) or send it now."""
        if self.transport is None or self.transport.is_closing():
            return
        try:
            frame = self.conn.send(event)
        except p.LocalProtocolError as exc:  # e.g. an item over the frame limit
            frame = self.conn.send(
                p.Error(getattr(event, "request_id", 0), p.ErrorCode.INTERNAL, str(exc))
            )
        out = self._out
        if out is None:
            if self._paused:
                # Another connection's unlock, or a timer, answers a WAIT of this one: a client
                # that does not read gets nothing more in its buffer until it drains.
                self._deferred.append(frame)
                return
            self.transport.write(frame)
            return
        out.append(frame)
        self._out_size += len(frame)
        if self._out_size >= WRITE_COALESCE:
            # Written as produced, not at the end of the read: the write may pause this
            # connection (pause_writing) before the next request is parsed.
            self.transport.write(b"".join(out))
            out.clear()
            self._out_size = 0

    def _refuse(self, code: int, message: str) -> None:
        if code == p.ErrorCode.SHUTTING_DOWN:
            logger.debug("Closing connection %s: %s", self.peername, message)
        elif not self.conn.ready:
            # Before the handshake anyone can connect: a line per refused connection would let
            # a flood write the log at its own rate. One line per interval, with a count.
            self.server.log_limited(
                "handshake",
                "Closed %d connection(s) before their handshake; the last, %s: %s",
                self.peername,
                message,
            )
        else:
            logger.warning("Closing connection %s: %s", self.peername, message)
        self.answer(p.Error(0, code, message))
        if self._out and self.transport is not None:
            self.transport.write(b"".join(self._out))
            self._out.clear()
        if self.transport is not None:
            self.transport.close()

    def _timed_out(self, why: str) -> None:
        self._timer = None
        self._refuse(p.ErrorCode.BAD_FRAME, f"{why} within the time limit")

    def _watch_partial_frame(self) -> None:
        # A client that starts a frame and never finishes it is closed after frame_timeout; it
        # holds at most one frame of memory meanwhile and delays nobody else.
        if not self.conn.ready:
            return
        if self.conn.buffered:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(
                    self.config.frame_timeout, self._timed_out, "an unfinished frame"
                )
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # Requests

    def handle(self, event: p.Event) -> None:
        if isinstance(event, p.Hello):
            self._hello(event)
            return
        if not self.conn.ready:
            return  # refused handshake: the connection is closing
        state = self.state
        state.operations += 1
        try:
            handler = _HANDLERS[type(event)]
        except KeyError:
            self.answer(p.Error(0, p.ErrorCode.UNKNOWN_TYPE, type(event).__name__))
            return
        # Looked up per request, not kept from the handshake: an application's store is freed
        # when its last item goes, and opened again by its next write.
        store = state.stores.get(self.application)
        if store is None:
            store = state.empty  # reads find nothing; writes open a store (_write)
        handler(self, store, event)
        if not len(store) and store is not state.empty:
            state.free_if_empty(self.application)

    def _hello(self, hello: p.Hello) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        highest = self.config.protocol_version
        if not p.MIN_PROTOCOL_VERSION <= hello.version <= highest:
            self._refuse(
                p.ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {hello.version} is not supported; this server speaks "
                f"{p.MIN_PROTOCOL_VERSION} to {highest}",
            )
            return
        proof = b""
        if self.config.auth_required:
            proof = self._authenticate(hello)
            if not proof:
                return
        self.application = hello.application
        self.answer(p.Ready(proof))
        if self.config.idle_timeout > 0:
            self._idle = asyncio.get_running_loop().call_later(
                self.config.idle_timeout, self._idle_check
            )

    def _authenticate(self, hello: p.Hello) -> bytes:
        """Check HELLO's proof; return READY's proof, or b"" once the connection is refused.

        An application listed in --app-secrets proves its own secret, and no other secret opens
        it (the global one included): the proof covers the application name, so a connection
        is bound to the one application its secret belongs to. Other names use the global secret.
        """
        application = hello.application
        own = self.config.app_secrets.get(application)
        secret = own if own is not None else self.config.secret
        if not hello.proof:
            self._refuse(p.ErrorCode.AUTH_REQUIRED, "this state server needs a shared secret")
            return b""
        if secret is None:
            self._refuse(
                p.ErrorCode.AUTH_FAILED,
                f"application {application[:64]!r} has no secret on this state server "
                "(it is not in --app-secrets and there is no global secret)",
            )
            return b""
        expected = p.client_proof(secret, self.nonce, hello.client_nonce, application)
        if not hmac.compare_digest(expected, hello.proof):
            why = "wrong shared secret"
            if own is not None:
                why = (
                    f"wrong secret for application {application[:64]!r}: it has its own secret "
                    "(--app-secrets), and a connection may only use the application whose "
                    "secret it proves"
                )
            self._refuse(p.ErrorCode.AUTH_FAILED, why)
            return b""
        self.tenant = own is not None
        return p.server_proof(secret, self.nonce, hello.client_nonce)

    def _idle_check(self) -> None:
        # Redis's timeout: an authenticated connection silent for --idle-timeout is closed
        # without a word; the clients reconnect transparently on their next request. One that
        # holds a lock or waits for one is never idle: closing it would release the lock.
        self._idle = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        timeout = self.config.idle_timeout
        silent = time.monotonic() - self._last_read
        if silent < timeout or self.held or self.waiting:
            delay = timeout - silent if silent < timeout else timeout
            self._idle = asyncio.get_running_loop().call_later(delay, self._idle_check)
            return
        logger.debug("Closing connection %s: idle for %.0f s", self.peername, silent)
        transport.close()

    def _get(self, store: MemoryStore, event: p.Get) -> None:
        item = store.get(event.key)
        self.answer(
            p.NotFound(event.request_id)
            if item is None
            else _item(event.request_id, item, self.state)
        )

    def _get_exclusive(self, store: MemoryStore, event: p.GetExclusive) -> None:
        item = store.get_exclusive(event.key)
        if item is None:
            self.answer(p.NotFound(event.request_id))
            return
        if not item.locked:
            self.state.locked(self, self.application, event.key, item.lock_id)
        self.answer(_item(event.request_id, item, self.state))

    def _write(
        self,
        store: MemoryStore,
        request_id: int,
        size: int,
        write: Callable[[MemoryStore], bool],
        journal: Callable[[], None] | None = None,
    ) -> None:
        """Run ``write`` within --max-memory and --max-applications, or answer STORE_FULL.

        ``journal`` appends a write that succeeded to ``--appendonly``'s log, before the reply.

        Policy (Redis's ``noeviction``): sweep expired sessions once, then refuse; never evict
        a live session. The client raises StateServerFull, the site answers 503.
        """
        state = self.state
        try:
            try:
                if store is state.empty:
                    store = state.store(self.application)
                ok = write(store)
            except StoreFull:
                state.purge_all_expired()  # may free this application's store: look it up again
                ok = write(state.store(self.application))
        except StoreFull as exc:
            self.server.log_limited(
                "full",
                "Refused %d write(s) (--max-memory %s); the last, %d bytes: %s",
                state.max_memory or "unbounded",
                size,
                exc,
            )
            message = f"the state server is full (--max-memory {state.max_memory} bytes): {exc}"
            self.answer(p.Error(request_id, p.ErrorCode.STORE_FULL, message))
            state.free_if_empty(self.application)
            return
        if ok and journal is not None and not self._journaled(request_id, journal):
            return
        self.answer(p.Result(request_id, ok))

    def _journaled(self, request_id: int, journal: Callable[[], None]) -> bool:
        """Append an acknowledged write to ``--appendonly``'s log; False: answered an error.

        Redis refuses writes it cannot append to its AOF (MISCONF); so do we, with STORE_FULL
        (the client's 503): the write is kept in memory but not acknowledged, since a crash
        would lose it. The log is left without a torn record, so later appends may succeed.
        """
        try:
            journal()
        except OSError as exc:
            self.server.log_limited(
                "appendonly",
                "Refused %d write(s): the append-only log could not be written: %s",
                exc.strerror or exc,
            )
            message = f"the state server could not append the write to its log: {exc}"
            self.answer(p.Error(request_id, p.ErrorCode.STORE_FULL, message))
            return False
        return True

    def _set(self, store: MemoryStore, event: p.SetAndRelease) -> None:
        lock_id = self.state.local_lock(event.lock_id)
        timeout = event.timeout
        if timeout > self.config.max_timeout:
            timeout = self.config.max_timeout  # --max-timeout: capped, not refused
        if not event.new_item:
            if store is self.state.empty:
                self.answer(p.Result(event.request_id, False))  # no such item: nothing to open
                return
            # The hot path (a save of an existing item): no closure, one try.
            try:
                ok = store.set_and_release(
                    event.key, event.data, lock_id, timeout, False, event.release
                )
            except StoreFull:
                pass
            else:
                aof = self.server.aof
                if ok and aof is not None:
                    append = aof.set
                    if not self._journaled(
                        event.request_id,
                        lambda: append(self.application, event.key, event.data, timeout),
                    ):
                        return
                self.answer(p.Result(event.request_id, ok))
                return

        def write(target: MemoryStore) -> bool:
            return target.set_and_release(
                event.key, event.data, lock_id, timeout, event.new_item, event.release
            )

        aof = self.server.aof
        journal = None
        if aof is not None:
            append = aof.set

            def journal() -> None:
                append(self.application, event.key, event.data, timeout)

        self._write(store, event.request_id, len(event.data or b""), write, journal)

    def _release(self, store: MemoryStore, event: p.Release) -> None:
        local = self.state.local_lock(event.lock_id)
        assert local is not None
        store.release(event.key, local)
        self.answer(p.Result(event.request_id, 1))

    def _remove(self, store: MemoryStore, event: p.Remove) -> None:
        ok = store.remove(event.key, self.state.local_lock(event.lock_id))
        aof = self.server.aof
        if ok and aof is not None:
            remove = aof.remove
            if not self._journaled(event.request_id, lambda: remove(self.application, event.key)):
                return
        self.answer(p.Result(event.request_id, ok))

    def _reset(self, store: MemoryStore, event: p.ResetTimeout) -> None:
        store.reset_timeout(event.key)
        self.answer(p.Result(event.request_id, 1))

    def _create(self, store: MemoryStore, event: p.CreateUninitialized) -> None:
        timeout = min(event.timeout, self.config.max_timeout)  # --max-timeout: capped

        def write(target: MemoryStore) -> bool:
            return target.create_uninitialized(event.key, timeout)

        self._write(store, event.request_id, 0, write)

    def _purge_expired(self, store: MemoryStore, event: p.PurgeExpired) -> None:
        if not event.with_data or event.dry_run:
            count = store.purge_expired(dry_run=event.dry_run)  # a count: one small reply
            self.answer(p.Result(event.request_id, count))
            return
        # The expired sessions with their data (purge_sessions feeding session_end): taken from
        # the store one batch of about EXPIRED_BATCH_BYTES at a time, the next only while the
        # connection's output is below its high-water mark, so a million expired sessions never
        # sit in the output buffer at once. The connection's later requests wait for the RESULT.
        self._purging = _Purging(store, event.request_id)
        if self.transport is not None:
            self.transport.pause_reading()  # until the RESULT: its requests would pile up
        self._purge_batches()

    def _purge_batches(self) -> None:
        job = self._purging
        items: list[ExpiredItem] = []
        while job is not None and not self._paused:
            if self.transport is None or self.transport.is_closing():
                self._purging = None
                return
            items.clear()
            count = job.store.purge_expired(
                on_expired=items.append, batch_bytes=EXPIRED_BATCH_BYTES
            )
            if count:
                job.count += count
                batch = tuple((item.session_key, item.data) for item in items)
                self.answer(p.ExpiredBatch(job.request_id, batch))
                continue
            self._purging = None
            self.state.free_if_empty(self.application)
            self.answer(p.Result(job.request_id, job.count))
            self.transport.resume_reading()
            if self._out is None and self.conn.buffered:
                # Requests that came behind it (outside _process, which goes on by itself).
                asyncio.get_running_loop().call_soon(self._process)
            return

    def _wait(self, store: MemoryStore, event: p.Wait) -> None:
        local = self.state.local_lock(event.lock_id)
        assert local is not None
        if event.timeout <= 0 or not store.holds(event.key, local):
            self.answer(p.Released(event.request_id, not store.holds(event.key, local)))
            return
        slot = (self.application, event.key)
        previous = self.waiting.pop(slot, None)
        if previous is not None:  # a client waits once per key at a time
            self._wait_over(slot, previous)
        waiter = _Waiter(self, event.request_id)
        try:
            self.state.add_waiter(slot, waiter)
        except StoreFull as exc:
            message = f"the state server is full (--max-memory {self.state.max_memory}): {exc}"
            self.answer(p.Error(event.request_id, p.ErrorCode.STORE_FULL, message))
            return
        waiter.handle = asyncio.get_running_loop().call_later(
            event.timeout, self._wait_over, slot, waiter
        )
        self.waiting[slot] = waiter

    def _wait_over(self, slot: tuple[str, str], waiter: _Waiter) -> None:
        if waiter.handle is not None:
            waiter.handle.cancel()
        self.state.drop_waiter(slot, waiter)
        if self.waiting.get(slot) is waiter:
            del self.waiting[slot]
        self.answer(p.Released(waiter.request_id, False))

    def _ping(self, store: MemoryStore, event: p.Ping) -> None:
        self.answer(p.Pong(event.request_id, event.payload))

    def _stats(self, store: MemoryStore, event: p.Stats) -> None:
        if self.tenant:  # an application's secret lists that application only
            self.answer(p.StatsReply(event.request_id, self.server.tenant_stats(self.application)))
            return
        self.answer(p.StatsReply(event.request_id, self.server.stats()))

    def _purge(self, store: MemoryStore, event: p.Purge) -> None:
        count = store.purge_expired()
        for key, *_ in store.snapshot():
            count += store.remove(key)
        aof = self.server.aof
        if aof is not None:
            purge = aof.purge
            if not self._journaled(event.request_id, lambda: purge(self.application)):
                return
        self.answer(p.Result(event.request_id, count))

    # The index of sessions by user (protocol version 2). The connection's application is
    # the only one it reaches: with --app-secrets, a site lists and binds its own sessions only.

    def _index_refused(self, event: p.Request) -> bool:
        """Answer an error and return True if this connection chose a version without it."""
        if self.conn.version >= p.USER_INDEX_VERSION:
            return False
        self.answer(
            p.Error(
                event.request_id,
                p.ErrorCode.UNSUPPORTED_VERSION,
                f"{type(event).__name__} needs protocol version {p.USER_INDEX_VERSION}; this "
                f"connection chose version {self.conn.version} in its HELLO",
            )
        )
        return True

    def _journal_binding(self, request_id: int, store: MemoryStore, key: str) -> bool:
        """Log the binding of ``key`` as it is now (its whole state); False: answered an error."""
        aof = self.server.aof
        if aof is None:
            return True
        binding = store.binding(key)
        application = self.application
        if binding is None:
            return self._journaled(request_id, lambda: aof.unbind(application, key))
        return self._journaled(request_id, lambda: aof.bind(application, key, binding))

    def _bind_user(self, store: MemoryStore, event: p.BindUser) -> None:
        if self._index_refused(event):
            return
        if not event.user_id:
            message = "BIND_USER needs a non-empty user id"
            self.answer(p.Error(event.request_id, p.ErrorCode.BAD_REQUEST, message))
            return
        if store is self.state.empty:
            self.answer(p.Result(event.request_id, 0))  # no session of this application
            return
        bind = functools.partial(
            store.bind_user,
            event.key,
            event.user_id,
            ip=event.ip,
            user_agent=event.user_agent,
            created=event.created,
            last_seen=event.last_seen,
        )
        try:
            try:
                ok = bind()
            except StoreFull:
                self.state.purge_all_expired()  # expired items still charged: room, maybe
                ok = bind()
        except StoreFull as exc:
            message = f"the state server is full (--max-memory {self.state.max_memory}): {exc}"
            self.answer(p.Error(event.request_id, p.ErrorCode.STORE_FULL, message))
            return
        except ValueError as exc:
            self.answer(p.Error(event.request_id, p.ErrorCode.BAD_REQUEST, str(exc)))
            return
        if ok and not self._journal_binding(event.request_id, store, event.key):
            return
        self.answer(p.Result(event.request_id, ok))

    def _touch_user(self, store: MemoryStore, event: p.TouchUser) -> None:
        if self._index_refused(event):
            return
        ok = store.touch_user(event.key, ip=event.ip, user_agent=event.user_agent)
        if ok and not self._journal_binding(event.request_id, store, event.key):
            return
        self.answer(p.Result(event.request_id, ok))

    def _unbind_user(self, store: MemoryStore, event: p.UnbindUser) -> None:
        if self._index_refused(event):
            return
        ok = store.unbind_user(event.key)
        if ok and not self._journal_binding(event.request_id, store, event.key):
            return
        self.answer(p.Result(event.request_id, ok))

    def _list_sessions(self, store: MemoryStore, event: p.ListSessions) -> None:
        if self._index_refused(event):
            return
        sessions, total = store.list_sessions(
            user_id=event.user_id, offset=event.offset, limit=event.limit
        )
        self._answer_sessions(event.request_id, sessions, total)

    def _session_info(self, store: MemoryStore, event: p.SessionInfoRequest) -> None:
        if self._index_refused(event):
            return
        info = store.session_info(event.key)
        self._answer_sessions(event.request_id, [] if info is None else [info], info is not None)

    def _answer_sessions(self, request_id: int, sessions: list[SessionInfo], total: int) -> None:
        # A page is cut to fit one frame (each entry at most about 5 KB): the client pages on
        # from the count it received.
        room = self.config.max_frame_size // 2
        entries: list[p.SessionEntry] = []
        for info in sessions:
            room -= 96 + len(info.session_key) + len(info.user_id.encode())
            room -= len((info.ip or "").encode()) + len((info.user_agent or "").encode())
            if room < 0 and entries:
                break
            entries.append(
                p.SessionEntry(
                    info.session_key,
                    info.user_id,
                    info.created,
                    info.last_seen,
                    info.expires or 0.0,
                    info.lock_age,
                    info.size,
                    info.locked,
                    info.ip,
                    info.user_agent,
                )
            )
        self.answer(p.Sessions(request_id, total, tuple(entries)))


_HANDLERS: dict[type[p.Event], Any] = {
    p.Get: _Peer._get,
    p.GetExclusive: _Peer._get_exclusive,
    p.SetAndRelease: _Peer._set,
    p.Release: _Peer._release,
    p.Remove: _Peer._remove,
    p.ResetTimeout: _Peer._reset,
    p.CreateUninitialized: _Peer._create,
    p.PurgeExpired: _Peer._purge_expired,
    p.Wait: _Peer._wait,
    p.Ping: _Peer._ping,
    p.Stats: _Peer._stats,
    p.Purge: _Peer._purge,
    p.BindUser: _Peer._bind_user,
    p.TouchUser: _Peer._touch_user,
    p.UnbindUser: _Peer._unbind_user,
    p.ListSessions: _Peer._list_sessions,
    p.SessionInfoRequest: _Peer._session_info,
}


class StateServer:
    """The listener, its periodic tasks (purge, snapshot, rate) and an orderly shutdown."""

    def __init__(self, config: ServerConfig) -> None:
        config.validate()
        self.config = config
        #: --tls-cert's context, loaded now: a bad file stops the start, not the first client.
        self.ssl_context = config.ssl_context()
        #: --max-memory, or its default derived from the machine (printed at start).
        self.max_memory = config.max_memory or default_max_memory()
        self.state = ServerState(
            max_memory=self.max_memory, max_applications=config.max_applications
        )
        self.peers: set[_Peer] = set()
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: asyncio.Event | None = None
        self._rates: collections.deque[tuple[float, int]] = collections.deque(maxlen=RATE_WINDOW)
        self.last_snapshot: float | None = None
        #: --appendonly's open log (None without it); replaced by each rewrite.
        self.aof: AppendOnlyLog | None = None
        # One rewrite (or snapshot) at a time; rewrites started by the log's size run as tasks.
        self._rewrite_lock = asyncio.Lock()
        self._rewrites: set[asyncio.Task[None]] = set()
        self._snapshot_size = 0
        self.sockets: list[Any] = []
        self.max_connections = config.max_connections or default_max_connections()
        # Rate-limited logging of refused connections and of accept() failures: (last logged,
        # events since then).
        self._limit_log: dict[str, tuple[float, int]] = {}

    def load_snapshot(self) -> int:
        """Load ``--snapshot`` if the file exists; a bad file raises SnapshotError."""
        if not self.config.snapshot:
            return 0
        snapshot, bound = read_snapshot_file(self.config.snapshot)
        bindings: dict[str, dict[str, Binding]] = {}
        for application, key, binding in bound:
            bindings.setdefault(application, {})[key] = binding
        if self.config.appendonly:
            # The snapshot, then every write logged since (PATH.aof, then PATH.aof.next if a
            # rewrite was cut off): Redis loads its base RDB and replays its AOF the same way.
            snapshot = restorable(load_appendonly(snapshot, self.config.snapshot, bindings))
        restored = self.state.restore(snapshot, bindings)
        logger.info("Restored %d session(s) from %s", restored, self.config.snapshot)
        return restored

    def _open_log(self) -> None:
        """Fold what was loaded into a fresh snapshot and start an empty log (``--appendonly``).

        The snapshot is written first: until the new log replaces the old one, a crash leaves
        the old log beside a snapshot that already holds it, which replays to the same sessions.
        A log cut off by a crash is thereby truncated: its last complete record is the end.
        """
        assert self.config.snapshot is not None
        path = self.config.snapshot
        write_snapshot(path, self.state.records(), self.state.binding_records())
        self._snapshot_size = os.path.getsize(path)
        self.aof = AppendOnlyLog(next_log_path(path))
        switch(path, self.aof)
        logger.info(
            "Append-only log %s: every write appended before its reply, fsync every %g s, "
            "rewritten into %s past %d bytes",
            log_path(path),
            FSYNC_INTERVAL,
            path,
            self.config.appendonly_rewrite_size,
        )

    async def start(self) -> None:
        self.load_snapshot()
        if self.config.snapshot:
            # Refuse now rather than run for hours and lose everything at shutdown (Redis
            # checks its dump directory at start too).
            check_snapshot_path(self.config.snapshot)
            if self.config.appendonly:
                self._open_log()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        self._stopping = asyncio.Event()
        try:
            self._server = await loop.create_server(
                lambda: _Peer(self),
                self.config.host,
                self.config.port,
                reuse_address=True,
                backlog=LISTEN_BACKLOG,
                ssl=self.ssl_context,
                # The TLS handshake gets --handshake-timeout too (then the protocol's own
                # handshake starts its timer): a connection that never finishes it is dropped.
                ssl_handshake_timeout=self.config.handshake_timeout if self.ssl_context else None,
            )
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise OSError(address_in_use(self.config.host, self.config.port)) from None
        self.sockets = list(self._server.sockets)
        if self.ssl_context is not None:
            logger.info(
                "TLS: certificate %s, TLS 1.2 or later, client certificates %s",
                self.config.tls_cert,
                f"required (CA {self.config.tls_client_ca})"
                if self.config.tls_client_ca
                else "not required",
            )
        if self.config.app_secrets:
            logger.info(
                "Per-application secrets for %d application(s) (--app-secrets)",
                len(self.config.app_secrets),
            )
        self._tasks = [asyncio.create_task(self._tick())]
        if self.config.purge_interval > 0:
            self._tasks.append(asyncio.create_task(self._purge_loop()))
        if self.config.snapshot and self.config.snapshot_interval > 0:
            self._tasks.append(asyncio.create_task(self._snapshot_loop()))
        if self.aof is not None:
            self._tasks.append(asyncio.create_task(self._appendonly_loop()))
        names = ", ".join(_address(s.getsockname()) for s in self.sockets)
        logger.info(
            "State server listening on %s (secret: %s, max memory: %s, snapshot: %s, loop: %s)",
            names,
            "required" if self.config.secret else "none",
            self.max_memory,
            self.config.snapshot or "off",
            _loop_name(loop),
        )
        logger.info(
            "Memory: at most %s (keys and overhead included), %d application(s), "
            "timeouts capped at %d s",
            f"{self.max_memory} bytes"
            + ("" if self.config.max_memory else " (default: half of this machine's memory)"),
            self.config.max_applications,
            self.config.max_timeout,
        )
        logger.info(
            "Connections: at most %d (open-file limit %s), handshake timeout %g s, idle timeout %s",
            self.max_connections,
            _nofile_limit(),
            self.config.handshake_timeout,
            f"{self.config.idle_timeout:g} s" if self.config.idle_timeout else "off",
        )

    def note_refused(self) -> None:
        """Log connections refused over --max-connections: once per interval, with a count."""
        self.log_limited(
            "refused",
            "Refused %d connection(s): --max-connections %d reached (Redis maxclients)",
            self.max_connections,
        )

    def log_limited(self, kind: str, message: str, *args: Any) -> None:
        # One line per LIMIT_LOG_INTERVAL whatever the rate of events: a flood must not turn
        # into megabytes of log (the accept loop used to log at 1 MiB/s when out of descriptors).
        now = time.monotonic()
        last, count = self._limit_log.get(kind, (-LIMIT_LOG_INTERVAL, 0))
        count += 1
        if now - last >= LIMIT_LOG_INTERVAL:
            logger.warning(message, count, *args)
            self._limit_log[kind] = (now, 0)
        else:
            self._limit_log[kind] = (last, count)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # asyncio reports accept() failing for lack of descriptors or memory through here (and
        # retries a second later); logged once per interval instead of a traceback each time.
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES:
            self.log_limited(
                "accept",
                "accept() failed %d time(s): %s; raise the open-file limit (LimitNOFILE) or "
                "lower --max-connections",
                exc.strerror or exc,
            )
            return
        loop.default_exception_handler(context)

    def stop(self) -> None:
        """Ask ``serve_forever`` to shut down (signal handlers call this)."""
        if self._stopping is not None:
            self._stopping.set()

    async def serve_forever(self) -> None:
        await self.start()
        assert self._stopping is not None
        await self._stopping.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop listening, close connections, stop tasks, write the last snapshot."""
        logger.info("Shutting down: %d connection(s) open", len(self.peers))
        if self._server is not None:
            self._server.close()
        for peer in list(self.peers):
            peer._refuse(p.ErrorCode.SHUTTING_DOWN, "the state server is shutting down")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), 5)
        # A rewrite in flight finishes (its worker thread cannot be cancelled) before the last.
        await asyncio.gather(*self._rewrites, return_exceptions=True)
        if self.config.snapshot:
            try:
                await self.write_snapshot()
            finally:
                if self.aof is not None:
                    self.aof.close()
        logger.info("State server stopped")

    async def write_snapshot(self) -> int:
        """Write the snapshot; with ``--appendonly``, rewrite the log into it (BGREWRITEAOF)."""
        path = self.config.snapshot
        assert path is not None
        async with self._rewrite_lock:
            records = self.state.records()  # on the loop thread: the stores are not shared
            bindings = self.state.binding_records()
            started = time.monotonic()
            aof = self.aof
            if aof is None:
                count = await asyncio.to_thread(write_snapshot, path, records, bindings)
            else:
                # Appends move to PATH.aof.next at the moment the records are taken (no await
                # in between); one left there by a failed rewrite keeps taking them.
                old = None
                if aof.path != next_log_path(path):
                    old = aof
                    aof = self.aof = AppendOnlyLog(next_log_path(path))
                count = await asyncio.to_thread(rewrite, path, records, old, aof, bindings)
            self._snapshot_size = os.path.getsize(path)
        self.last_snapshot = time.time()
        logger.info(
            "Wrote %d session(s) to %s in %.2f s%s",
            count,
            path,
            time.monotonic() - started,
            "" if self.aof is None else " (append-only log rewritten)",
        )
        return count

    async def _appendonly_loop(self) -> None:
        # Redis's appendfsync everysec: the fsync runs in a worker thread, never on the loop;
        # one that takes longer than a second delays the next, it never piles up.
        while True:
            await asyncio.sleep(FSYNC_INTERVAL)
            aof = self.aof
            if aof is None:
                continue
            try:
                await asyncio.to_thread(aof.sync)
            except OSError as exc:
                self.log_limited("fsync", "fsync of the append-only log failed %d time(s): %s", exc)
            # Redis's auto-aof-rewrite: once the log outgrows its threshold and the snapshot.
            limit = max(self.config.appendonly_rewrite_size, self._snapshot_size)
            if aof.size >= limit and not self._rewrite_lock.locked():
                task = asyncio.create_task(self._snapshot_once())
                self._rewrites.add(task)
                task.add_done_callback(self._rewrites.discard)

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.purge_interval)
            purged = self.state.purge_all_expired()
            if purged:
                logger.info("Purged %d expired session(s)", purged)

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.snapshot_interval)
            await self._snapshot_once()

    async def _snapshot_once(self) -> None:
        try:
            await self.write_snapshot()
        except OSError as exc:
            logger.error("Could not write the snapshot %s: %s", self.config.snapshot, exc)

    async def _tick(self) -> None:
        while True:
            self._rates.append((time.monotonic(), self.state.operations))
            await asyncio.sleep(1)

    def stats(self) -> dict[str, Any]:
        state = self.state
        now, operations = time.monotonic(), state.operations
        first = self._rates[0] if self._rates else (now, operations)
        elapsed = now - first[0]
        rate = (operations - first[1]) / elapsed if elapsed > 0 else 0.0
        return {
            "sessions": state.sessions,
            "bytes": state.bytes,
            "max_memory": state.max_memory,
            "max_applications": state.max_applications,
            "max_timeout": self.config.max_timeout,
            "locks": sum(len(peer.held) for peer in self.peers),
            "waiters": sum(len(w) for w in state.waiters.values()),
            "connections": len(self.peers),
            "max_connections": self.max_connections,
            "refused_connections": state.refused_connections,
            "operations": operations,
            "operations_per_second": round(rate, 1),
            "bound_sessions": sum(store.bound for store in state.stores.values()),
            "applications": {
                app: {"sessions": len(store), "bytes": store.bytes, "bound": store.bound}
                for app, store in state.stores.items()
            },
            "uptime": round(time.time() - state.started, 1),
            "snapshot": self.config.snapshot,
            "appendonly": None if self.aof is None else self.aof.path,
            "appendonly_size": None if self.aof is None else self.aof.size,
            "last_snapshot": self.last_snapshot,
            "pid": os.getpid(),
            "protocol_version": self.config.protocol_version,
            "loop": _loop_name(asyncio.get_running_loop()),
        }

    def tenant_stats(self, application: str) -> dict[str, Any]:
        """STATS for a connection holding an application's own secret: that application's
        sessions, bytes, locks, waiters and connections, never another's name or figures."""
        stats = self.stats()
        store = self.state.stores.get(application)
        peers = [peer for peer in self.peers if peer.application == application]
        stats.update(
            sessions=len(store) if store is not None else 0,
            bytes=store.bytes if store is not None else 0,
            locks=sum(len(peer.held) for peer in peers),
            waiters=sum(len(w) for (app, _), w in self.state.waiters.items() if app == application),
            connections=len(peers),
            bound_sessions=store.bound if store is not None else 0,
            applications={
                application: {"sessions": len(store), "bytes": store.bytes, "bound": store.bound}
            }
            if store is not None
            else {},
            scope=application,
        )
        return stats


_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def _nofile_limit() -> str:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


#: Linux's default ephemeral port range, used when /proc does not say (another kernel).
LINUX_EPHEMERAL_PORTS = (32768, 60999)


def ephemeral_port_range() -> tuple[int, int]:
    """The range the kernel picks client ports from (/proc/sys/net/ipv4/ip_local_port_range)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as stream:
            low, high = stream.read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return LINUX_EPHEMERAL_PORTS


def address_in_use(host: str, port: int) -> str:
    """Explain EADDRINUSE: the default port 42424 (ASP.NET's) lies in Linux's ephemeral range,
    so any outgoing connection may have taken it as its local port (issue 13)."""
    low, high = ephemeral_port_range()
    where = _address((host, port))
    if low <= port <= high:
        why = (
            f"port {port} lies in this machine's ephemeral port range {low}-{high} "
            "(/proc/sys/net/ipv4/ip_local_port_range), so a client socket of another "
            "connection may hold it, or another server listens on it"
        )
    else:
        why = f"another process listens on it (ephemeral port range: {low}-{high})"
    return (
        f"cannot listen on {where}: address already in use: {why}. Reserve the port so the "
        f"kernel never hands it to client sockets (sysctl -w net.ipv4.ip_local_reserved_ports="
        f"{port}, and the same line in /etc/sysctl.d/), or choose another port below {low} "
        "(--port, or runstateserver host:port)"
    )


def _address(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class _Signals:
    """Route SIGTERM and SIGINT to a graceful stop while the server runs (uvicorn's shape)."""

    server: StateServer

    def __enter__(self) -> _Signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.server.stop)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run(config: ServerConfig) -> None:
    """Run a state server until SIGTERM or SIGINT."""
    server = StateServer(config)

    async def main() -> None:
        with _Signals(server):
            await server.serve_forever()

    with asyncio.Runner(loop_factory=loop_factory(config.loop)) as runner:
        runner.run(main())
