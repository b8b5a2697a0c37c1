"""A complete session-state provider over a dict: the example of docs/custom.md."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django_statemodes.providers.base import ExpiredItem, SessionStateProvider, StateItem


@dataclass
class Entry:
    data: Any
    timeout: int
    expires: float
    lock_id: int = 1
    locked: bool = False
    lock_date: float = 0.0
    initialize: bool = False


class DictProvider(SessionStateProvider):
    """Sessions in a dict of this process, guarded by one condition variable.

    ``clock`` returns monotonic seconds; the conformance kit passes one it can advance.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, **options: Any) -> None:
        super().__init__(**options)
        self.clock = clock
        self.items: dict[str, Entry] = {}
        self.changed = threading.Condition()

    def _live(self, session_key: str, now: float) -> Entry | None:
        # An expired entry is never served, even before purge_expired removes it.
        entry = self.items.get(session_key)
        return entry if entry is not None and entry.expires > now else None

    def get(self, session_key: str) -> StateItem | None:
        with self.changed:
            now = self.clock()
            entry = self._live(session_key, now)
            if entry is None:
                return None
            entry.expires = now + entry.timeout  # sliding expiry
            initialize, entry.initialize = entry.initialize, False
            return StateItem(
                data=entry.data,
                locked=entry.locked,
                lock_id=entry.lock_id,
                lock_age=now - entry.lock_date if entry.locked else 0.0,
                initialize=initialize,
            )

    def get_exclusive(self, session_key: str) -> StateItem | None:
        with self.changed:
            now = self.clock()
            entry = self._live(session_key, now)
            if entry is None:
                return None
            entry.expires = now + entry.timeout
            if entry.locked:  # never wait here: the session core does the waiting
                return StateItem(locked=True, lock_id=entry.lock_id, lock_age=now - entry.lock_date)
            entry.locked, entry.lock_id, entry.lock_date = True, entry.lock_id + 1, now
            initialize, entry.initialize = entry.initialize, False
            return StateItem(data=entry.data, lock_id=entry.lock_id, initialize=initialize)

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
        with self.changed:
            now = self.clock()
            entry = self._live(session_key, now)
            if new_item:
                if entry is not None:
                    return False
                self.items[session_key] = Entry(data, timeout, now + timeout)
                return True
            if entry is None:
                return False
            if lock_id is not None and (not entry.locked or entry.lock_id != lock_id):
                return False  # the lock was broken: never overwrite the new holder
            entry.data, entry.timeout, entry.expires = data, timeout, now + timeout
            entry.initialize = False
            if not keep_lock and lock_id is not None and entry.locked:
                entry.locked = False
                self.changed.notify_all()
            return True

    def release(self, session_key: str, lock_id: int) -> None:
        with self.changed:
            now = self.clock()
            entry = self._live(session_key, now)
            if entry is not None and entry.locked and entry.lock_id == lock_id:
                entry.locked = False
                entry.expires = now + entry.timeout
                self.changed.notify_all()

    def remove(self, session_key: str, lock_id: int | None = None) -> bool:
        with self.changed:
            entry = self.items.get(session_key)
            if entry is None:
                return False
            if lock_id is not None and entry.locked and entry.lock_id != lock_id:
                return False
            del self.items[session_key]
            self.changed.notify_all()
            return True

    def create_uninitialized(self, session_key: str, timeout: int) -> bool:
        with self.changed:
            now = self.clock()
            if self._live(session_key, now) is not None:
                return False
            self.items[session_key] = Entry(None, timeout, now + timeout, initialize=True)
            return True

    def purge_expired(
        self,
        *,
        on_expired: Callable[[ExpiredItem], None] | None = None,
        dry_run: bool = False,
        batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        with self.changed:
            now = self.clock()
            expired = [(key, e.data) for key, e in self.items.items() if e.expires <= now]
            if not dry_run:
                for key, _ in expired:
                    del self.items[key]
                self.changed.notify_all()
        if on_expired is not None and not dry_run:
            for key, data in expired:
                on_expired(ExpiredItem(key, data))  # the core sends session_end
        if on_batch is not None:
            on_batch(len(expired))
        return len(expired)

    def wait_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        with self.changed:
            # Checked under the mutex that release() holds to notify: no wake-up is lost.
            entry = self.items.get(session_key)
            if entry is not None and entry.locked and entry.lock_id == lock_id:
                self.changed.wait(timeout)
