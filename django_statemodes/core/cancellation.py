"""Cancellation-safe store calls on the async path, and the sync API refused inside an event loop.

An ASGI request is cancelled when its client disconnects or the server shuts down or times it
out, at whatever ``await`` it is in. A lock-changing call (``get_exclusive``, ``set_and_release``,
``release``, ``remove``) cancelled in flight may still reach the store: the state server or Redis
then grants a lock whose id the request never learns, held until ``STATEMODES_LOCK_TIMEOUT``
(110 s) blocks the session. So ``call`` shields these calls: the store's answer is always read,
and a lock granted to a request that was cancelled meanwhile is released in the background
(``cleanups``; ``drain()`` awaits them). A write in flight completes, as it does when a
blocking request's client goes away.

``refuse_sync`` is Django's ``async_unsafe`` for sessions: the blocking API reaching the store
from a thread that runs an event loop would freeze every request of the worker during a lock
wait, so it raises ``SessionStateSyncInAsync`` naming the awaitable twin instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from asyncio.events import _get_running_loop
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

from django_statemodes.exceptions import SessionStateSyncInAsync, SessionStoreUnavailable
from django_statemodes.providers.base import StateItem

__all__ = ["LOCK_CHANGING", "call", "cleanups", "drain", "refuse_sync"]

logger = logging.getLogger("django_statemodes")

#: Provider calls that take, keep or end a lock: cancelled midway, they must still complete.
LOCK_CHANGING = frozenset({"get_exclusive", "set_and_release", "release", "remove"})

#: Background tasks finishing the lock-changing calls of cancelled requests, and releasing the
#: locks they were granted (kept referenced: asyncio holds tasks only weakly).
cleanups: set[asyncio.Future[Any]] = set()


async def call(provider: object, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Await the provider's ``a``-twin of ``name``; a lock-changing call survives cancellation."""
    method = getattr(provider, "a" + name)
    if name not in LOCK_CHANGING:
        return await method(*args, **kwargs)  # reads and waits: cancelling them changes nothing
    if getattr(provider, "stores_objects", False):
        # Live objects in this process's memory (InProc): its calls make no I/O, so they never
        # suspend and no cancellation can land inside them; a shield (a task, one more loop
        # iteration) would be pure cost on every async request.
        return await method(*args, **kwargs)
    inner = asyncio.ensure_future(method(*args, **kwargs))
    try:
        return await asyncio.shield(inner)
    except asyncio.CancelledError:
        # The request is cancelled; the store call is not. Release what it grants.
        _track(inner)
        if name == "get_exclusive":
            inner.add_done_callback(partial(_release_granted, provider, args[0]))
        raise


def _track(task: asyncio.Future[Any]) -> None:
    cleanups.add(task)
    task.add_done_callback(_finished)


def _finished(task: asyncio.Future[Any]) -> None:
    cleanups.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("A session store call of a cancelled request failed: %r", task.exception())


def _release_granted(provider: Any, session_key: str, inner: asyncio.Future[Any]) -> None:
    if inner.cancelled() or inner.exception() is not None:
        return
    item: StateItem | None = inner.result()
    if item is not None and not item.locked:  # granted: this request held it, now nobody does
        _track(asyncio.ensure_future(_release(provider, session_key, item.lock_id)))


#: Pauses before the background release's next tries: a store that is briefly busy or down (a
#: full connection pool, a restart) still gets the lock back long before the lock timeout.
RELEASE_RETRIES = (0.5, 1.0, 2.0, 4.0)


async def _release(provider: Any, session_key: str, lock_id: int) -> None:
    for pause in (*RELEASE_RETRIES, None):
        try:
            await provider.arelease(session_key, lock_id)
            return
        except SessionStoreUnavailable:
            if pause is None:
                raise
            await asyncio.sleep(pause)


async def drain() -> None:
    """Wait until every background cleanup of this event loop is done (tests, shutdown)."""
    loop = asyncio.get_running_loop()
    while True:
        mine = [task for task in cleanups if task.get_loop() is loop]
        if not mine:
            return
        await asyncio.wait(mine)


def refuse_sync() -> None:
    """Raise ``SessionStateSyncInAsync`` if this thread runs an event loop.

    Called where blocking code is about to call the provider; ``_get_running_loop`` is
    asyncio's C-level lookup (tens of nanoseconds), so the sync path stays cheap.
    """
    if _get_running_loop() is None or os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE"):
        return
    raise SessionStateSyncInAsync(_advice(sys._getframe(1)))


# What a session method is called in a view, and the awaitable to use instead.
_SPELLED: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {
    "__getitem__": lambda f: (f"request.session[{f['key']!r}]", f"aget({f['key']!r})"),
    "__setitem__": lambda f: (
        f"request.session[{f['key']!r}] = ...",
        f"aset({f['key']!r}, value)",
    ),
    "__delitem__": lambda f: (f"del request.session[{f['key']!r}]", f"apop({f['key']!r})"),
    "__contains__": lambda f: (f"{f['key']!r} in request.session", f"ahas_key({f['key']!r})"),
    "get": lambda f: (f"request.session.get({f['key']!r})", f"aget({f['key']!r})"),
}


def _advice(frame: FrameType | None) -> str:
    from django.contrib.sessions.backends.base import SessionBase

    # The outermost method of the session on the stack is the one the view called.
    entry: FrameType | None = None
    depth = 0
    while frame is not None and depth < 30:
        if isinstance(frame.f_locals.get("self"), SessionBase):
            entry = frame
        elif entry is not None:
            break
        frame, depth = frame.f_back, depth + 1
    if entry is None:
        called, twin = "the blocking session API", "the a-prefixed session methods"
    else:
        name = entry.f_code.co_name
        spell = _SPELLED.get(name)
        if spell is not None:
            called, twin = spell(entry.f_locals)
        else:
            called, twin = f"request.session.{name}()", f"a{name}()"
        twin = f"`await request.session.{twin}`"
    return (
        f"{called} in an async view: use {twin}. The blocking session API would stop this "
        "worker's event loop while it waits for the store and the session's lock, as Django's "
        "SynchronousOnlyOperation says of the ORM. (DJANGO_ALLOW_ASYNC_UNSAFE lifts the check.)"
    )
