"""Session locks: acquire, queue, steal, wait, and the per-process lock statistics.

ASP.NET's protocol, with event-driven waits: a ReadWrite request's first touch asks the store
for the item exclusively (``get_exclusive``). If another request holds the lock, ``wait`` waits in this
process's queue for the session (at most ``STATEMODES_LOCK_QUEUE_LIMIT`` waiters, ASP.NET's
request queue limit) until the provider says the lock may have ended, then asks again. A lock
held longer than ``STATEMODES_LOCK_TIMEOUT`` (ASP.NET's executionTimeout) is broken: released
with its holder's lock id, so the holder's later write no longer matches and is refused.

A blocking waiter holds one of the server's threads for its whole wait: the waiters of one
session may hold at most ``STATEMODES_LOCK_WAITING_THREADS`` threads of the process (by default
half of the most requests it has served at once, ``serving``), or one user's parallel requests
would leave no thread for anyone else (beyond it: ``SessionQueueFull``, a 503). An async waiter holds no thread and counts only against
``STATEMODES_LOCK_QUEUE_LIMIT``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django_statemodes.conf import conf
from django_statemodes.exceptions import SessionQueueFull
from django_statemodes.providers.base import StateItem

from .calls import NO_KEYWORDS, Steps

__all__ = [
    "LockStats",
    "lock_stats",
    "refused",
    "serving",
    "wait",
    "waiting",
    "waiting_threads",
    "waiting_threads_limit",
]

logger = logging.getLogger("django_statemodes")


@dataclass
class LockStats:
    """Per-process lock counters, shown by the demo's status page.

    Plain increments without a mutex: ``acquired`` is bumped on every request, and a count
    rarely lost between two threads does not matter for statistics.
    """

    acquired: int = 0
    waited: int = 0
    wait_seconds: float = 0.0
    stolen: int = 0
    refused_writes: int = 0
    queue_full: int = 0
    #: The most blocking requests the process has served at once (SessionStateMiddleware).
    peak_serving: int = 0

    def as_dict(self) -> dict[str, float]:
        return dict(vars(self))


lock_stats = LockStats()

#: The threads (``threading.get_ident()``) serving a request through SessionStateMiddleware's
#: blocking path now. A set, not a counter: add and discard are atomic under the GIL, ``+= 1``
#: on a global is not. Only these waiters are bounded: an async waiter holds no thread, and a
#: script's or a test's own threads are no server's.
serving: set[int] = set()

# Requests of this process waiting per session key (ASP.NET counts per app domain too), and
# those of them that hold a thread while they wait.
_waiting: dict[str, int] = {}
_waiting_threads: dict[str, int] = {}
_waiting_mutex = threading.Lock()


def waiting(session_key: str) -> int:
    """Return how many requests of this process wait for the session's lock now."""
    return _waiting.get(session_key, 0)


def waiting_threads(session_key: str) -> int:
    """Return how many threads of this process wait for the session's lock now."""
    return _waiting_threads.get(session_key, 0)


def waiting_threads_limit() -> int:
    """How many threads the waiters of one session may hold (``STATEMODES_LOCK_WAITING_THREADS``).

    Derived when unset: half of the most requests the process has served at once, at least 1.
    A threaded server's capacity is its thread count (gunicorn ``--threads``, runserver's
    unbounded threads), which Django cannot ask for; the peak it has served is what it showed.
    """
    limit: int | None = conf.STATEMODES_LOCK_WAITING_THREADS
    if limit is not None:
        return limit
    return max(1, lock_stats.peak_serving // 2)


def _full(message: str) -> SessionQueueFull:
    lock_stats.queue_full += 1
    return SessionQueueFull(message)


@contextmanager
def _queued(session_key: str) -> Iterator[None]:
    limit = conf.STATEMODES_LOCK_QUEUE_LIMIT
    blocking = threading.get_ident() in serving
    threads = waiting_threads_limit() if blocking else 0
    with _waiting_mutex:
        count = _waiting.get(session_key, 0)
        if count >= limit:
            raise _full(
                f"The request queue limit of the session is exceeded ({limit} requests are "
                f"already waiting; STATEMODES_LOCK_QUEUE_LIMIT)."
            )
        if blocking:
            held = _waiting_threads.get(session_key, 0)
            if held >= threads:
                raise _full(
                    f"{held} threads of this process already wait for this session's lock "
                    f"(STATEMODES_LOCK_WAITING_THREADS: {threads}); more would leave other "
                    "users' requests without a thread."
                )
            _waiting_threads[session_key] = held + 1
        _waiting[session_key] = count + 1
    try:
        yield
    finally:
        with _waiting_mutex:
            _leave(_waiting, session_key)
            if blocking:
                _leave(_waiting_threads, session_key)


def _leave(counts: dict[str, int], session_key: str) -> None:
    left = counts[session_key] - 1
    if left:
        counts[session_key] = left
    else:
        del counts[session_key]


def wait(session_key: str, held: StateItem) -> Steps[StateItem | None]:
    """Wait for the lock that ``get_exclusive`` found ``held``, then take it.

    Returns the locked item, or None if the session ended meanwhile. The session's first
    ``get_exclusive`` is its own (``core.session``): nearly every lock is free.
    """
    started = time.monotonic()
    lock_timeout = conf.STATEMODES_LOCK_TIMEOUT
    item: StateItem | None = held
    with _queued(session_key):
        while item is not None and item.locked:
            if item.lock_age >= lock_timeout:
                _steal(session_key, item)
                yield ("release", (session_key, item.lock_id), NO_KEYWORDS)
            else:
                timeout = lock_timeout - item.lock_age
                yield ("wait_for_release", (session_key, item.lock_id, timeout), NO_KEYWORDS)
            item = yield ("get_exclusive", (session_key,), NO_KEYWORDS)
    lock_stats.waited += 1
    lock_stats.wait_seconds += time.monotonic() - started
    return item


def _steal(session_key: str, item: StateItem) -> None:
    # ASP.NET breaks a lock once lockAge >= executionTimeout, by releasing it with the
    # holder's lock cookie; the holder's later write then no longer matches and is refused.
    lock_stats.stolen += 1
    logger.warning(
        "Breaking the lock of session %s...: held for %.1f s, longer than "
        "STATEMODES_LOCK_TIMEOUT (%s s). The holder's write will be refused.",
        session_key[:8],
        item.lock_age,
        conf.STATEMODES_LOCK_TIMEOUT,
    )


def refused(session_key: str) -> None:
    """Count and log a write refused because this request's lock was broken."""
    lock_stats.refused_writes += 1
    logger.warning(
        "Refused the write of session %s...: its lock was broken after "
        "STATEMODES_LOCK_TIMEOUT and another request holds it now.",
        session_key[:8],
    )
