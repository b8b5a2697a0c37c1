"""The provider contract: the Pythonic form of ASP.NET's ``SessionStateStoreProviderBase``.

Every mode is a provider of this one contract: InProc, StateServer, SQL and Redis alike, and any
class named by ``STATEMODES_CUSTOM_PROVIDER``. A provider stores opaque payloads under session
keys; the session core (``backends/base.py``) owns everything else: the lock lifecycle, waiting,
lock stealing, access modes, serialization, size limits and signals.

Locks follow ASP.NET: each item has a ``lock_id`` (ASP.NET's LockCookie) that grows by one on
every exclusive get. Writes, releases and removals that carry a ``lock_id`` take effect only while
the stored one still matches, so the holder of a broken lock can never overwrite the new holder.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, ClassVar

from asgiref.sync import sync_to_async

from django_statemodes.items import ExpiredItem, SessionInfo, StateItem

__all__ = ["ExpiredItem", "SessionInfo", "SessionStateProvider", "StateItem"]


class SessionStateProvider:
    """Base class for session-state stores, and for ``STATEMODES_CUSTOM_PROVIDER`` classes.

    Keys are Django session keys. Payloads are ``bytes`` (already serialized and, if enabled,
    compressed by the core), except for providers that set ``stores_objects = True``: they keep
    the session's dict itself, as ASP.NET InProc keeps live objects. Timeouts are whole seconds
    of sliding expiry: every get, exclusive get, release and reset moves the expiry to
    ``now + timeout``. An expired item must never be returned, even if it was not purged yet.
    """

    #: True if payloads are live Python dicts (never serialized); only sensible in-process.
    stores_objects: ClassVar[bool] = False

    #: Settings read when the provider is built: ``override_settings`` of one rebuilds it.
    settings: ClassVar[frozenset[str]] = frozenset()

    #: Longest sleep of the default ``wait_for_release`` back-off, in seconds.
    poll_interval: ClassVar[float] = 0.05

    #: True if this provider keeps the index of sessions by user (``bind_user`` and the rest).
    indexes_users: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        """Take provider options (``STATEMODES_CUSTOM_PROVIDER_OPTIONS`` in Custom mode)."""
        self.options = options

    # Methods that subclasses must implement.

    def get(self, session_key: str) -> StateItem | None:
        """Return the item without locking it (even if locked), or None if missing or expired."""
        raise NotImplementedError("subclasses of SessionStateProvider must provide a get() method")

    def get_exclusive(self, session_key: str) -> StateItem | None:
        """Lock and return the item, or return it with ``locked=True`` and no data if held.

        Return None if the item is missing or expired. Never wait: the core does the waiting.
        """
        raise NotImplementedError(
            "subclasses of SessionStateProvider must provide a get_exclusive() method"
        )

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
        """Store ``data`` and return True, or return False if the write is refused.

        With ``new_item`` insert only if the key is absent (refused if present). Otherwise update
        only an existing item, and when ``lock_id`` is given only while it still holds that lock;
        ``lock_id=None`` updates whatever the lock state (Django's unlocked last-write-wins, for
        code that uses a store outside a request). The lock is released in the same call, unless
        ``keep_lock`` (a mid-request ``save()``, or ``request.session.save()`` in a view).
        """
        raise NotImplementedError(
            "subclasses of SessionStateProvider must provide a set_and_release() method"
        )

    def release(self, session_key: str, lock_id: int) -> None:
        """Unlock the item if it is still locked with ``lock_id``; slide its expiry."""
        raise NotImplementedError(
            "subclasses of SessionStateProvider must provide a release() method"
        )

    def remove(self, session_key: str, lock_id: int | None = None) -> bool:
        """Delete the item (if ``lock_id`` is given, only while it holds that lock)."""
        raise NotImplementedError(
            "subclasses of SessionStateProvider must provide a remove() method"
        )

    def create_uninitialized(self, session_key: str, timeout: int) -> bool:
        """Insert an empty placeholder item unless the key exists; return True if inserted."""
        raise NotImplementedError(
            "subclasses of SessionStateProvider must provide a create_uninitialized() method"
        )

    def purge_expired(
        self,
        *,
        on_expired: Callable[[ExpiredItem], None] | None = None,
        dry_run: bool = False,
        batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Remove expired items and return how many there were.

        If ``on_expired`` is given, call it with each removed item and its payload (so the core
        can send ``session_end``); without it, providers should not fetch payloads at all.
        ``dry_run`` counts without removing. ``batch_size`` bounds one batch where the store
        purges in batches; ``on_batch``, if given, is called with the running total after each
        batch (a store that purges in one step calls it once), for progress displays.
        """
        raise NotImplementedError(
            "subclasses of SessionStateProvider must provide a purge_expired() method"
        )

    # Hooks with a working default that providers may override.

    def wait_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        """Block until the lock ``lock_id`` may have been released, or ``timeout`` passes.

        The default polls with a short back-off (not ASP.NET's fixed 500 ms). Override it with a
        real wake-up where the store has one (a condition variable, LISTEN/NOTIFY, pub/sub).
        Returning early is always allowed: the core simply tries ``get_exclusive`` again.
        """
        time.sleep(min(timeout, self.poll_interval))

    def close(self) -> None:
        """Release connections and other resources (called when settings change)."""

    # The index of sessions by user (``STATEMODES_USER_INDEX``): providers that keep it set
    # ``indexes_users = True`` and implement these five methods. Removing a session (remove,
    # expiry, purge) removes its entry, or the listings never return it and prune it.

    def bind_user(
        self, session_key: str, user_id: str, *, ip: str | None, user_agent: str | None
    ) -> bool:
        """Record that the live session belongs to ``user_id`` (replacing any earlier owner).

        ``created`` and ``last_seen`` become now. Return False, recording nothing, if the
        session does not exist.
        """
        raise self._no_index("bind_user")

    def touch_user(self, session_key: str, *, ip: str | None, user_agent: str | None) -> None:
        """Set ``last_seen`` to now (and ``ip``/``user_agent`` if given) on a bound live session.

        A no-op for a session that is missing or bound to no user.
        """
        raise self._no_index("touch_user")

    def unbind_user(self, session_key: str) -> None:
        """Forget the session's owner (the session itself stays); a no-op if it has none."""
        raise self._no_index("unbind_user")

    def user_sessions(self, user_id: str) -> list[SessionInfo]:
        """Return the live sessions bound to ``user_id``, in O(their number), never a scan.

        May prune index entries of sessions that expired or were removed.
        """
        raise self._no_index("user_sessions")

    def list_sessions(
        self, *, user_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SessionInfo], int]:
        """Return a bounded page of live sessions (bound or not) and their total, for the admin.

        Sessions bound to no user have ``user_id == ""``. May scan the store.
        """
        raise self._no_index("list_sessions")

    def _no_index(self, method: str) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__module__}.{type(self).__qualname__} keeps no index of sessions by "
            f"user (indexes_users is False): it has no {method}() method"
        )

    # Async twins. The defaults run the sync method in a thread (Django's SessionBase does the
    # same); a provider with a native async client overrides them.

    async def aget(self, session_key: str) -> StateItem | None:
        return await sync_to_async(self.get)(session_key)

    async def aget_exclusive(self, session_key: str) -> StateItem | None:
        return await sync_to_async(self.get_exclusive)(session_key)

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
        return await sync_to_async(self.set_and_release)(
            session_key,
            data,
            lock_id=lock_id,
            timeout=timeout,
            new_item=new_item,
            keep_lock=keep_lock,
        )

    async def arelease(self, session_key: str, lock_id: int) -> None:
        await sync_to_async(self.release)(session_key, lock_id)

    async def aremove(self, session_key: str, lock_id: int | None = None) -> bool:
        return await sync_to_async(self.remove)(session_key, lock_id)

    async def await_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        """Async ``wait_for_release``: the default sleeps on the event loop, never blocking it."""
        await asyncio.sleep(min(timeout, self.poll_interval))

    async def abind_user(
        self, session_key: str, user_id: str, *, ip: str | None, user_agent: str | None
    ) -> bool:
        return await sync_to_async(self.bind_user)(
            session_key, user_id, ip=ip, user_agent=user_agent
        )

    async def atouch_user(
        self, session_key: str, *, ip: str | None, user_agent: str | None
    ) -> None:
        await sync_to_async(self.touch_user)(session_key, ip=ip, user_agent=user_agent)

    async def aunbind_user(self, session_key: str) -> None:
        await sync_to_async(self.unbind_user)(session_key)

    async def auser_sessions(self, user_id: str) -> list[SessionInfo]:
        return await sync_to_async(self.user_sessions)(user_id)

    async def alist_sessions(
        self, *, user_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SessionInfo], int]:
        return await sync_to_async(self.list_sessions)(user_id=user_id, offset=offset, limit=limit)
