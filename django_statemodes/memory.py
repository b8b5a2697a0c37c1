"""A thread-safe expiring map of session items with per-item locks.

Django-free on purpose: InProc mode keeps it in the web process, and the state server keeps the
same store behind TCP. It never waits; instead it calls ``on_unlock(key)`` whenever a lock ends
(release, write-and-release, removal, expiry), so each adapter wakes its waiters its own way
(threading events in InProc, futures in the asyncio server).

Expiry is sliding (ASP.NET ``timeout``). Items are kept in one insertion-ordered dict per timeout
value and eviction rank, moved to the end on every touch: the front of each dict is then always
the next item of its rank to expire, so purging costs O(expired) and no request ever scans the
store.

Eviction (past ``max_items``) goes by rank, so that a flood of one-off sessions cannot push out
the sessions of people who use the site (docs/inproc.md, "Eviction"):

- ``FRESH``: created and never read by a later request (a placeholder, a bot's one request);
- ``RETURNING``: read again after it was created, so its client came back with the key;
- ``VALUED``: saved with ``valued=True`` (InProc: a logged-in user's session).

A rank is evicted only when no unlocked item of a lower rank is left; within a rank, the item
nearest to expiry goes first. A rank is a number in the queue's key, so ranking costs no
structure and no work on the hot path beyond the queue move each touch already made.

The index of sessions by user (``bind_user`` and the rest) lives in two side dicts, never in the
items: a session nobody bound costs nothing more, and an item leaving the store (removal,
expiry, eviction, replacement) drops its entry in the one place every removal goes through.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django_statemodes.items import ExpiredItem, SessionInfo, StateItem
from django_statemodes.stateserver.errors import StoreFull

__all__ = ["Binding", "Budget", "MemoryStore", "StoreFull"]

# StateItem(data, locked, lock_id, lock_age, initialize) without the named tuple's Python-level
# __new__: a third of the time, on every request of InProc and of the state server.
_state_item = tuple.__new__

#: Sliding expiry is kept to this many seconds: a write right after a read skips moving the item.
TOUCH_GRANULARITY = 1.0

#: Eviction ranks, lowest evicted first (see the module's docstring).
FRESH, RETURNING, VALUED = 0, 1, 2
RANKS = (FRESH, RETURNING, VALUED)
#: A queue's key is ``timeout * RANK_SLOTS + rank``: one int, as cheap to hash as the timeout.
RANK_SLOTS = 4
#: What ``purge_expired(batch_bytes=...)`` counts per item beyond its payload and key, so that a
#: batch of empty placeholders is bounded too.
BATCH_ITEM_BYTES = 64


#: Longest user id, in UTF-8 bytes (the SQL column is varchar(255)); a longer one is refused.
MAX_USER_ID_BYTES = 255
#: Longest user agent and IP address kept, in characters; longer ones are cut (client input).
MAX_USER_AGENT_LENGTH = 512
MAX_IP_LENGTH = 45
#: What a binding is charged beyond its strings (with ``item_overhead``: the state server's
#: --max-memory): its entries in both side dicts and the record itself.
BINDING_OVERHEAD = 240


def _queue_of(timeout: int, rank: int) -> int:
    return timeout * RANK_SLOTS + rank


@dataclass(slots=True)
class _Item:
    data: Any
    timeout: int
    expires: float
    size: int
    lock_id: int = 0
    locked: bool = False
    lock_date: float = 0.0
    uninitialized: bool = False
    rank: int = FRESH
    #: The key of the queue holding it: ``_queue_of(timeout, rank)``, kept to skip the sum.
    queue: int = 0


@dataclass(slots=True)
class Binding:
    """Whose a session is, and the little that is kept about it (times are unix seconds)."""

    user_id: str
    created: float
    last_seen: float
    ip: str | None = None
    user_agent: str | None = None
    #: Bytes charged for it (0 without ``item_overhead``).
    size: int = 0


def check_user_id(user_id: str) -> str:
    """Return ``user_id``, or raise ValueError if it is empty or over MAX_USER_ID_BYTES."""
    if not user_id:
        raise ValueError("a user id is a non-empty string")
    if len(user_id) > MAX_USER_ID_BYTES // 4 and len(user_id.encode()) > MAX_USER_ID_BYTES:
        raise ValueError(
            f"user id of {len(user_id.encode())} bytes is over the limit of "
            f"{MAX_USER_ID_BYTES} bytes of UTF-8"
        )
    return user_id


def _cut(value: str | None, limit: int) -> str | None:
    return None if value is None else value[:limit]


def _sizeof(data: Any) -> int:
    return len(data) if isinstance(data, (bytes, bytearray, memoryview)) else 0


class Budget:
    """Bytes charged by several stores against one limit (the state server's ``--max-memory``).

    Shared by the state server's stores, one per application, so a write checks one counter
    instead of summing every store (which cost 1.5 ms per SET with 20,000 applications). Like
    Redis's ``maxmemory``, it counts everything a client can make the server hold, not only the
    payloads: each store charges its items' keys and a per-item overhead, and the server
    charges its per-application overhead here too.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.used = 0

    def check(self, extra: int) -> None:
        """Raise StoreFull if charging ``extra`` more bytes would pass the limit."""
        if self.limit is not None and extra > 0 and self.used + extra > self.limit:
            raise StoreFull(
                f"storing {extra} bytes would exceed the limit of {self.limit} bytes "
                f"({self.used} in use, keys and overhead included)"
            )


class MemoryStore:
    """Session items in memory, bounded by a count and a byte size.

    Args:
        max_items: most items kept; past it an unlocked item is evicted (reported through
            ``on_evict``): of the lowest rank present, the one nearest to expiry. None means
            no bound.
        max_bytes: most payload bytes kept; past it a write raises ``StoreFull`` (a state
            server must refuse, never silently drop, a session). None means no bound.
        budget: a ``Budget`` shared with other stores; the store charges it what its items
            cost and a write past its limit raises ``StoreFull``. None (InProc) means none.
        item_overhead: bytes charged per item on top of its payload, plus its key's length;
            None (InProc) charges the payload only, so ``bytes`` and ``max_bytes`` count
            payload bytes as they always did.
        on_unlock: called with a key after its lock ended, outside the store's mutex.
        clock: a monotonic clock in seconds (tests inject a fake one).
        wall_clock: unix time, for the index's ``created``, ``last_seen`` and ``expires``.
    """

    def __init__(
        self,
        *,
        max_items: int | None = None,
        max_bytes: int | None = None,
        on_unlock: Callable[[str], None] | None = None,
        on_evict: Callable[[ExpiredItem], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        budget: Budget | None = None,
        item_overhead: int | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.budget = budget
        self._item_overhead = item_overhead
        self.on_unlock = on_unlock
        self.on_evict = on_evict
        self._clock = clock
        self._mutex = threading.Lock()
        self._items: dict[str, _Item] = {}
        # _queue_of(timeout, rank) -> keys in expiry order (dicts keep insertion order; touched
        # keys move last).
        self._queues: dict[int, dict[str, None]] = {}
        #: Bytes charged for the items: payloads, plus keys and overhead with item_overhead.
        self.bytes = 0
        self.evictions = 0
        self._wall = wall_clock
        # The index of sessions by user: key -> its binding, user id -> its keys (in binding
        # order). Side dicts, so that an item nobody bound carries no field for it.
        self._bindings: dict[str, Binding] = {}
        self._users: dict[str, dict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bound(self) -> int:
        """Sessions bound to a user (entries of the index, expired ones not purged included)."""
        return len(self._bindings)

    # Internal helpers; callers hold the mutex.

    def _touch(self, key: str, item: _Item, now: float) -> None:
        item.expires = now + item.timeout
        queue = self._queues[item.queue]
        del queue[key]
        queue[key] = None

    def _requeue(self, key: str, item: _Item, timeout: int, rank: int) -> None:
        """Move an item to the queue of ``timeout`` and ``rank``, at its back.

        Callers touch it at the same moment, so the back keeps the new queue in expiry order.
        """
        old = self._queues[item.queue]
        del old[key]
        if not old:
            del self._queues[item.queue]
        item.timeout, item.rank, item.queue = timeout, rank, _queue_of(timeout, rank)
        self._queues.setdefault(item.queue, {})[key] = None

    def _returned(self, key: str, item: _Item) -> None:
        """A later request read a FRESH item: its client came back with the key.

        A placeholder's first read (``uninitialized``) does not count: that is the client
        following the redirect that issued the key, not a return.
        """
        if not item.uninitialized:
            self._requeue(key, item, item.timeout, RETURNING)

    def _live(self, key: str, now: float) -> _Item | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item.expires <= now:
            # An expired item is never served, even before the sweep reaches it. It is left in
            # place for purge_expired(), which reports it (and its data) for session_end.
            return None
        return item

    def _drop(self, key: str, item: _Item) -> None:
        del self._items[key]
        queue = self._queues[item.queue]
        del queue[key]
        if not queue:
            del self._queues[item.queue]
        self.bytes -= item.size
        if self.budget is not None:
            self.budget.used -= item.size
        if self._bindings:  # one test of an empty dict when the index is not in use
            self._unbind(key)

    def _unbind(self, key: str) -> bool:
        binding = self._bindings.pop(key, None)
        if binding is None:
            return False
        keys = self._users[binding.user_id]
        del keys[key]
        if not keys:
            del self._users[binding.user_id]
        self.bytes -= binding.size
        if self.budget is not None:
            self.budget.used -= binding.size
        return True

    def _bind(self, key: str, binding: Binding) -> None:
        """Record ``binding`` for ``key`` (charged), replacing any earlier one."""
        self._unbind(key)
        binding.size = 0 if self._item_overhead is None else self._binding_size(binding)
        self._bindings[key] = binding
        self._users.setdefault(binding.user_id, {})[key] = None
        self.bytes += binding.size
        if self.budget is not None:
            self.budget.used += binding.size

    @staticmethod
    def _binding_size(binding: Binding) -> int:
        return (
            BINDING_OVERHEAD
            + len(binding.user_id)
            + len(binding.ip or "")
            + len(binding.user_agent or "")
        )

    def _info(self, key: str, item: _Item, binding: Binding | None, now: float) -> SessionInfo:
        wall = self._wall()
        if binding is None:
            created = last_seen = 0.0
            user_id, ip, user_agent = "", None, None
        else:
            created, last_seen = binding.created, binding.last_seen
            user_id, ip, user_agent = binding.user_id, binding.ip, binding.user_agent
        return SessionInfo(
            session_key=key,
            user_id=user_id,
            created=created,
            last_seen=last_seen,
            expires=wall + (item.expires - now),
            ip=ip,
            user_agent=user_agent,
            locked=item.locked,
            lock_age=now - item.lock_date if item.locked else 0.0,
            size=_sizeof(item.data),
        )

    def _insert(self, key: str, item: _Item) -> None:
        item.queue = _queue_of(item.timeout, item.rank)
        self._items[key] = item
        self._queues.setdefault(item.queue, {})[key] = None
        self.bytes += item.size
        if self.budget is not None:
            self.budget.used += item.size

    def _charge(self, key: str, payload: int) -> int:
        """Bytes an item of ``payload`` bytes under ``key`` is charged (its ``size``)."""
        overhead = self._item_overhead
        return payload if overhead is None else payload + len(key) + overhead

    def _victim(self) -> tuple[str, _Item] | None:
        """Return the unlocked item to evict: lowest rank first, then nearest to expiry.

        Each queue is read from its front past its locked items only, and locked items are
        few (one per request in flight), so an eviction costs O(queues + locked), never a scan.
        """
        for rank in RANKS:
            best: tuple[str, _Item] | None = None
            for queue_key, queue in self._queues.items():
                if queue_key % RANK_SLOTS != rank:
                    continue
                for key in queue:
                    item = self._items[key]
                    if not item.locked:
                        if best is None or item.expires < best[1].expires:
                            best = (key, item)
                        break
            if best is not None:
                return best
        return None

    def _make_room(self, extra_bytes: int, evicted: list[ExpiredItem], new: bool = True) -> None:
        if self.max_bytes is not None and self.bytes + extra_bytes > self.max_bytes:
            raise StoreFull(
                f"storing {extra_bytes} bytes would exceed the store's limit of "
                f"{self.max_bytes} bytes ({self.bytes} in use)"
            )
        if self.budget is not None:
            self.budget.check(extra_bytes)
        if self.max_items is None or not new:
            return  # an update does not add an item: nothing to evict
        while len(self._items) >= self.max_items:
            victim = self._victim()
            if victim is None:
                raise StoreFull(f"all {len(self._items)} sessions are locked; none can be evicted")
            key, item = victim
            self._drop(key, item)
            self.evictions += 1
            evicted.append(ExpiredItem(key, item.data))

    def _after(self, unlocked: str | None, evicted: list[ExpiredItem] | None = None) -> None:
        if unlocked is not None and self.on_unlock is not None:
            self.on_unlock(unlocked)
        if evicted and self.on_evict is not None:
            for expired in evicted:
                self.on_evict(expired)

    # The provider contract.

    def get(self, key: str) -> StateItem | None:
        with self._mutex:
            now = self._clock()
            item = self._live(key, now)
            if item is None:
                return None
            self._touch(key, item, now)
            if item.rank == FRESH:
                self._returned(key, item)
            initialize = item.uninitialized
            item.uninitialized = False
            lock_age = now - item.lock_date if item.locked else 0.0
            return _state_item(
                StateItem, (item.data, item.locked, item.lock_id, lock_age, initialize)
            )

    def get_exclusive(self, key: str) -> StateItem | None:
        with self._mutex:
            now = self._clock()
            item = self._live(key, now)
            if item is None:
                return None
            self._touch(key, item, now)
            if item.rank == FRESH:
                self._returned(key, item)
            if item.locked:
                return StateItem(locked=True, lock_id=item.lock_id, lock_age=now - item.lock_date)
            item.locked = True
            item.lock_id += 1  # ASP.NET: LockCookie = LockCookie + 1
            item.lock_date = now
            initialize = item.uninitialized
            item.uninitialized = False
            return _state_item(StateItem, (item.data, False, item.lock_id, 0.0, initialize))

    def set_and_release(
        self,
        key: str,
        data: Any,
        lock_id: int | None,
        timeout: int,
        new_item: bool = False,
        release: bool = True,
        valued: bool = False,
    ) -> bool:
        """Store ``data``; ``valued`` ranks the item VALUED (evicted last), False unranks it.

        A store that cannot tell (the state server: opaque bytes) passes nothing: its items
        are never VALUED, and FRESH and RETURNING still keep one-off sessions out of the way.
        """
        evicted: list[ExpiredItem] = []
        size = len(data) if type(data) is bytes else 0 if type(data) is dict else _sizeof(data)
        if self._item_overhead is not None:
            size += len(key) + self._item_overhead
        with self._mutex:
            now = self._clock()
            item = self._live(key, now)
            if new_item:
                if item is not None:
                    return False
                stale = self._items.get(key)
                if stale is not None:  # expired, not yet purged: replaced by the new item
                    self._drop(key, stale)
                self._make_room(size, evicted)
                new = _Item(data, timeout, now + timeout, size, lock_id=1)
                if valued:
                    new.rank = VALUED
                self._insert(key, new)
                unlocked = None
            else:
                if item is None:
                    return False
                if lock_id is not None and (not item.locked or item.lock_id != lock_id):
                    return False  # the lock was broken (stolen) after the lock timeout
                if size != item.size:
                    self._make_room(size - item.size, evicted, new=False)
                self.bytes += size - item.size
                if self.budget is not None:
                    self.budget.used += size - item.size
                item.data, item.size, item.uninitialized = data, size, False
                # The rank changes on a login or a logout (valued flips), not on every save.
                if timeout != item.timeout or valued != (item.rank == VALUED):
                    rank = VALUED if valued else RETURNING if item.rank == VALUED else item.rank
                    self._requeue(key, item, timeout, rank)
                    self._touch(key, item, now)
                elif now + timeout - item.expires >= TOUCH_GRANULARITY:
                    # The lock-and-load of this request touched it a moment ago: sliding
                    # expiry to the second saves a queue move on every save.
                    self._touch(key, item, now)
                unlocked = None
                if release and lock_id is not None and item.locked:
                    item.locked = False
                    unlocked = key
        self._after(unlocked, evicted)
        return True

    def release(self, key: str, lock_id: int) -> None:
        with self._mutex:
            now = self._clock()
            item = self._live(key, now)
            if item is None or not item.locked or item.lock_id != lock_id:
                return
            item.locked = False
            self._touch(key, item, now)
        self._after(key)

    def remove(self, key: str, lock_id: int | None = None) -> bool:
        with self._mutex:
            item = self._items.get(key)
            if item is None:
                return False
            if lock_id is not None and item.locked and item.lock_id != lock_id:
                return False
            self._drop(key, item)
            was_locked = item.locked
        self._after(key if was_locked else None)
        return True

    def holds(self, key: str, lock_id: int) -> bool:
        """Return True while the item is locked with ``lock_id`` (a waiter's re-check)."""
        with self._mutex:
            item = self._live(key, self._clock())
            return item is not None and item.locked and item.lock_id == lock_id

    def reset_timeout(self, key: str) -> None:
        with self._mutex:
            now = self._clock()
            item = self._live(key, now)
            if item is not None:
                self._touch(key, item, now)

    def create_uninitialized(self, key: str, timeout: int) -> bool:
        evicted: list[ExpiredItem] = []
        with self._mutex:
            now = self._clock()
            if self._live(key, now) is not None:
                return False
            stale = self._items.get(key)
            if stale is not None:
                self._drop(key, stale)
            size = self._charge(key, 0)  # a placeholder holds no payload, but costs its key
            self._make_room(size, evicted)
            item = _Item(None, timeout, now + timeout, size, lock_id=1, uninitialized=True)
            self._insert(key, item)
        self._after(None, evicted)
        return True

    # The index of sessions by user.

    def bind_user(
        self,
        key: str,
        user_id: str,
        *,
        ip: str | None = None,
        user_agent: str | None = None,
        created: float | None = None,
        last_seen: float | None = None,
    ) -> bool:
        """Bind the live item ``key`` to ``user_id`` (replacing any earlier owner).

        ``created`` and ``last_seen`` become now unless given (a session moved from another
        store keeps its own); ``ip`` and ``user_agent`` are cut to
        MAX_IP_LENGTH and MAX_USER_AGENT_LENGTH. Returns False (recording nothing) if there is
        no live item. Raises ValueError for an empty or too long user id, and StoreFull past
        ``budget`` (with ``item_overhead``, the binding is charged).
        """
        check_user_id(user_id)
        wall = self._wall()
        binding = Binding(
            user_id,
            wall if created is None else created,
            wall if last_seen is None else last_seen,
            _cut(ip, MAX_IP_LENGTH),
            _cut(user_agent, MAX_USER_AGENT_LENGTH),
        )
        with self._mutex:
            if self._live(key, self._clock()) is None:
                return False
            if self._item_overhead is not None:
                old = self._bindings.get(key)
                extra = self._binding_size(binding) - (old.size if old is not None else 0)
                if self.max_bytes is not None and self.bytes + extra > self.max_bytes:
                    raise StoreFull(
                        f"binding a user would exceed the store's limit of {self.max_bytes} bytes"
                    )
                if self.budget is not None:
                    self.budget.check(extra)
            self._bind(key, binding)
        return True

    def touch_user(self, key: str, *, ip: str | None = None, user_agent: str | None = None) -> bool:
        """Set ``last_seen`` to now (and ``ip``/``user_agent`` unless None) on a bound live item.

        Returns False (a no-op) if the item is missing, expired or bound to nobody. It does not
        slide the item's expiry: it is not a session write. The charge follows the strings'
        new lengths without a budget check (they are bounded, and a touch must not fail).
        """
        wall = self._wall()
        with self._mutex:
            binding = self._bindings.get(key)
            if binding is None or self._live(key, self._clock()) is None:
                return False
            binding.last_seen = wall
            if ip is not None or user_agent is not None:
                if ip is not None:
                    binding.ip = _cut(ip, MAX_IP_LENGTH)
                if user_agent is not None:
                    binding.user_agent = _cut(user_agent, MAX_USER_AGENT_LENGTH)
                self._bind(key, binding)  # recharged for the new lengths
        return True

    def unbind_user(self, key: str) -> bool:
        """Forget the owner of ``key`` (the item stays); False if it had none."""
        with self._mutex:
            return self._unbind(key)

    def binding(self, key: str) -> Binding | None:
        """Return the binding of ``key`` (a copy), or None."""
        with self._mutex:
            binding = self._bindings.get(key)
            if binding is None:
                return None
            return Binding(
                binding.user_id,
                binding.created,
                binding.last_seen,
                binding.ip,
                binding.user_agent,
                binding.size,
            )

    def session_info(self, key: str) -> SessionInfo | None:
        """Return what the index knows of the live item ``key`` (``user_id`` "" if unbound)."""
        with self._mutex:
            now = self._clock()
            item = self._live(key, now)
            if item is None:
                return None
            return self._info(key, item, self._bindings.get(key), now)

    def user_keys(self, user_id: str) -> list[str]:
        """Return the keys bound to ``user_id`` (expired ones not yet purged included)."""
        with self._mutex:
            return list(self._users.get(user_id, ()))

    def user_sessions(self, user_id: str) -> list[SessionInfo]:
        """Return the live sessions bound to ``user_id``, in binding order: O(their number).

        Expired items not yet purged are left out (and left in place: the purge reports them
        for ``session_end`` and drops their entries).
        """
        with self._mutex:
            now = self._clock()
            result: list[SessionInfo] = []
            for key in self._users.get(user_id, ()):
                item = self._live(key, now)
                if item is not None:
                    result.append(self._info(key, item, self._bindings[key], now))
            return result

    def list_sessions(
        self, *, user_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SessionInfo], int]:
        """Return a page of live sessions, bound or not (``user_id == ""``), and the total.

        Without ``user_id`` the page walks the store in insertion order, skipping ``offset``
        live items: O(offset + limit), for the admin; the total counts the items held,
        expired ones the purge has not reached yet included. With ``user_id``, the user's
        sessions (``user_sessions``) paged.
        """
        offset, limit = max(0, offset), max(0, limit)
        if user_id is not None:
            sessions = self.user_sessions(user_id)
            return sessions[offset : offset + limit], len(sessions)
        with self._mutex:
            now = self._clock()
            page: list[SessionInfo] = []
            skipped = 0
            if limit:
                for key, item in self._items.items():
                    if item.expires <= now:
                        continue
                    if skipped < offset:
                        skipped += 1
                        continue
                    page.append(self._info(key, item, self._bindings.get(key), now))
                    if len(page) >= limit:
                        break
            return page, len(self._items)

    def bindings(self) -> list[tuple[str, Binding]]:
        """Return ``(key, binding)`` for every live bound item, for persistence."""
        with self._mutex:
            now = self._clock()
            return [
                (key, binding)
                for key, binding in self._bindings.items()
                if self._live(key, now) is not None
            ]

    def restore_bindings(self, bindings: list[tuple[str, Binding]]) -> int:
        """Bind the items from ``bindings()`` that this store holds (unchecked: a restore).

        Returns how many were bound; entries of items not held (expired) are skipped.
        """
        restored = 0
        with self._mutex:
            for key, binding in bindings:
                if key in self._items and binding.user_id:
                    self._bind(key, binding)
                    restored += 1
        return restored

    def purge_expired(
        self,
        *,
        on_expired: Callable[[ExpiredItem], None] | None = None,
        dry_run: bool = False,
        batch_size: int | None = None,
        batch_bytes: int | None = None,
    ) -> int:
        """Remove expired items (all of them, or a batch); return how many.

        ``batch_bytes`` stops once the removed items reach about that many bytes (payload and key,
        plus BATCH_ITEM_BYTES each; one item at least), so that a caller sending them somewhere
        can pace itself: call again until it returns 0. ``batch_size`` is the provider contract's, and unused: all at once.
        """
        expired: list[ExpiredItem] = []
        taken = 0
        with self._mutex:
            now = self._clock()
            for queue_key in list(self._queues):
                queue = self._queues[queue_key]
                for key in list(queue):
                    item = self._items[key]
                    if item.expires > now:
                        break  # the rest of this queue expires later
                    expired.append(ExpiredItem(key, item.data))
                    if not dry_run:
                        self._drop(key, item)
                    if batch_bytes is not None:
                        taken += _sizeof(item.data) + len(key) + BATCH_ITEM_BYTES
                        if taken >= batch_bytes:
                            break
                if batch_bytes is not None and taken >= batch_bytes:
                    break
        if on_expired is not None and not dry_run:
            for item_ in expired:
                on_expired(item_)
        if self.on_unlock is not None and not dry_run:
            for item_ in expired:
                self.on_unlock(item_.session_key)
        return len(expired)

    def snapshot(self) -> list[tuple[str, Any, int, float]]:
        """Return ``(key, data, timeout, seconds_left)`` for every live item, for persistence."""
        with self._mutex:
            now = self._clock()
            return [
                (key, item.data, item.timeout, item.expires - now)
                for key, item in self._items.items()
                if item.expires > now and not item.uninitialized
            ]

    def restore(self, items: list[tuple[str, Any, int, float]]) -> int:
        """Insert unlocked items from ``snapshot()`` with their remaining lifetimes.

        Items are inserted soonest-to-expire first, which keeps every queue in expiry order.
        Returns how many were restored (already expired ones are skipped).
        """
        restored = 0
        with self._mutex:
            now = self._clock()
            for key, data, timeout, seconds_left in sorted(items, key=lambda i: i[3]):
                if seconds_left <= 0:
                    continue
                stale = self._items.get(key)
                if stale is not None:
                    self._drop(key, stale)
                size = self._charge(key, _sizeof(data))
                item = _Item(data, timeout, now + min(seconds_left, timeout), size)
                item.rank = RETURNING  # it outlived a restart: it was in use, not a one-off
                self._insert(key, item)
                restored += 1
        return restored
