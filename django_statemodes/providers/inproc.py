"""The InProc provider: sessions in this process's memory, as live Python objects.

Like ASP.NET InProc: the fastest mode, no serialization, lost when the process restarts, and
private to one process, so it is only correct with one worker process (ASP.NET's "web garden"
caveat). Use StateServer, SQL or Redis when several processes serve the site.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from django_statemodes.exceptions import SessionStoreFull, StoreFull
from django_statemodes.memory import MemoryStore
from django_statemodes.providers.base import (
    ExpiredItem,
    SessionInfo,
    SessionStateProvider,
    StateItem,
)

# Expired sessions are swept (and session_end sent) lazily, at most this often.
SWEEP_INTERVAL = 1.0

#: django.contrib.auth.SESSION_KEY, the logged-in user's id: its presence ranks a session
#: VALUED for eviction. Spelled out, not imported: importing django.contrib.auth here would
#: import its middleware and signals into every process using InProc, auth installed or not.
AUTH_SESSION_KEY = "_auth_user_id"


def _full(exc: StoreFull) -> SessionStoreFull:
    # The store's own StoreFull names no setting and is no error the middleware knows: it
    # would end the request as a bare 500.
    return SessionStoreFull(
        f"The InProc session store cannot take a new session: {exc} "
        "(STATEMODES_INPROC_MAX_SESSIONS). Locked sessions are never evicted; one can be once "
        "its request ends."
    )


class InProcProvider(SessionStateProvider):
    """A provider over a ``MemoryStore`` with event-driven lock hand-off."""

    stores_objects: ClassVar[bool] = True
    #: The index lives beside the sessions in the store: per process, like the sessions.
    indexes_users: ClassVar[bool] = True

    def __init__(
        self,
        *,
        max_items: int | None = None,
        on_expired: Callable[[ExpiredItem, str], None] | None = None,
    ) -> None:
        super().__init__()
        self.on_expired = on_expired
        self.store = MemoryStore(max_items=max_items, on_unlock=self._wake, on_evict=self._evicted)
        self._waiters: dict[str, list[Callable[[], None]]] = {}
        self._waiters_mutex = threading.Lock()
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL

    # Wake-up: a waiter registers a callback, then re-checks the lock (no lost wake-ups).

    def _wake(self, session_key: str) -> None:
        # Nearly every release has no waiter: skip the mutex then. Safe because a waiter
        # registers before it re-checks the lock, so a release it missed still finds it here.
        if session_key not in self._waiters:
            return
        with self._waiters_mutex:
            callbacks = self._waiters.pop(session_key, ())
        for callback in callbacks:
            callback()

    def _register(self, session_key: str, callback: Callable[[], None]) -> None:
        with self._waiters_mutex:
            self._waiters.setdefault(session_key, []).append(callback)

    def _unregister(self, session_key: str, callback: Callable[[], None]) -> None:
        with self._waiters_mutex:
            callbacks = self._waiters.get(session_key)
            if callbacks and callback in callbacks:
                callbacks.remove(callback)
                if not callbacks:
                    del self._waiters[session_key]

    def wait_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        event = threading.Event()
        self._register(session_key, event.set)
        try:
            if self.store.holds(session_key, lock_id):
                event.wait(timeout)
        finally:
            self._unregister(session_key, event.set)

    async def await_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not future.done():
                future.set_result(None)

        def wake() -> None:
            loop.call_soon_threadsafe(resolve)

        self._register(session_key, wake)
        try:
            if self.store.holds(session_key, lock_id):
                await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            pass
        finally:
            self._unregister(session_key, wake)

    # Expiry and eviction feed session_end.

    def _evicted(self, item: ExpiredItem) -> None:
        if self.on_expired is not None:
            self.on_expired(item, "evicted")

    def _expired(self, item: ExpiredItem) -> None:
        if self.on_expired is not None:
            self.on_expired(item, "expired")

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self.store.purge_expired(on_expired=self._expired)

    # The contract: the store does the work; live objects need no async twin.

    def get(self, session_key: str) -> StateItem | None:
        if time.monotonic() >= self._next_sweep:
            self._maybe_sweep()
        return self.store.get(session_key)

    def get_exclusive(self, session_key: str) -> StateItem | None:
        if time.monotonic() >= self._next_sweep:  # _maybe_sweep() inlined: every request
            self._maybe_sweep()
        return self.store.get_exclusive(session_key)

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
        try:
            # Positional: a keyword call costs more than the store's own bookkeeping here.
            # A logged-in user's session is VALUED: a flood of anonymous sessions past the
            # bound evicts every anonymous one before it (docs/inproc.md, "Eviction").
            return self.store.set_and_release(
                session_key,
                data,
                lock_id,
                timeout,
                new_item,
                not keep_lock,
                type(data) is dict and AUTH_SESSION_KEY in data,
            )
        except StoreFull as exc:
            raise _full(exc) from None

    def release(self, session_key: str, lock_id: int) -> None:
        self.store.release(session_key, lock_id)

    def remove(self, session_key: str, lock_id: int | None = None) -> bool:
        return self.store.remove(session_key, lock_id)

    def create_uninitialized(self, session_key: str, timeout: int) -> bool:
        try:
            return self.store.create_uninitialized(session_key, timeout)
        except StoreFull as exc:
            raise _full(exc) from None

    def purge_expired(
        self,
        *,
        on_expired: Callable[[ExpiredItem], None] | None = None,
        dry_run: bool = False,
        batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        count = self.store.purge_expired(
            on_expired=on_expired if on_expired is not None else self._expired, dry_run=dry_run
        )
        if on_batch is not None:
            on_batch(count)  # one step: one batch
        return count

    # The index of sessions by user: the store keeps it beside the items.

    def bind_user(
        self, session_key: str, user_id: str, *, ip: str | None, user_agent: str | None
    ) -> bool:
        return self.store.bind_user(session_key, user_id, ip=ip, user_agent=user_agent)

    def touch_user(self, session_key: str, *, ip: str | None, user_agent: str | None) -> None:
        self.store.touch_user(session_key, ip=ip, user_agent=user_agent)

    def unbind_user(self, session_key: str) -> None:
        self.store.unbind_user(session_key)

    def user_sessions(self, user_id: str) -> list[SessionInfo]:
        return self.store.user_sessions(user_id)

    def list_sessions(
        self, *, user_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SessionInfo], int]:
        return self.store.list_sessions(user_id=user_id, offset=offset, limit=limit)

    # In-memory calls never block on I/O: no thread hop for async callers.

    async def aget(self, session_key: str) -> StateItem | None:
        return self.get(session_key)

    async def aget_exclusive(self, session_key: str) -> StateItem | None:
        return self.get_exclusive(session_key)

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
        return self.set_and_release(
            session_key,
            data,
            lock_id=lock_id,
            timeout=timeout,
            new_item=new_item,
            keep_lock=keep_lock,
        )

    async def arelease(self, session_key: str, lock_id: int) -> None:
        self.release(session_key, lock_id)

    async def aremove(self, session_key: str, lock_id: int | None = None) -> bool:
        return self.remove(session_key, lock_id)

    async def abind_user(
        self, session_key: str, user_id: str, *, ip: str | None, user_agent: str | None
    ) -> bool:
        return self.bind_user(session_key, user_id, ip=ip, user_agent=user_agent)

    async def atouch_user(
        self, session_key: str, *, ip: str | None, user_agent: str | None
    ) -> None:
        self.touch_user(session_key, ip=ip, user_agent=user_agent)

    async def aunbind_user(self, session_key: str) -> None:
        self.unbind_user(session_key)

    async def auser_sessions(self, user_id: str) -> list[SessionInfo]:
        return self.user_sessions(user_id)

    async def alist_sessions(
        self, *, user_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SessionInfo], int]:
        return self.list_sessions(user_id=user_id, offset=offset, limit=limit)
