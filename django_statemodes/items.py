"""What a store holds and reports: the item types shared by every provider and the state server.

Django-free and asgiref-free: the state server daemon stores these too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["ExpiredItem", "SessionInfo", "StateItem"]


class StateItem(NamedTuple):
    """What ``get`` or ``get_exclusive`` found under a key (a named tuple: cheap to build).

    ``locked`` means one thing: another request holds the lock, the caller does not. From
    ``get`` (which never locks) the item comes with its data and the holder's ``lock_id`` and
    ``lock_age``; from ``get_exclusive`` it comes without data: the caller did not get the lock.
    After a successful ``get_exclusive``, ``locked`` is False and ``lock_id`` is the caller's
    own. ``initialize`` is ASP.NET's ``InitializeItem`` action: the first read of an item made by
    ``create_uninitialized``.
    """

    data: Any = None
    locked: bool = False
    lock_id: int = 0
    lock_age: float = 0.0
    initialize: bool = False


@dataclass(frozen=True, slots=True)
class ExpiredItem:
    """A session that ``purge_expired`` removed; ``data`` is ``None`` if the store cannot tell."""

    session_key: str
    data: Any = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One live session in the index of sessions by user (times are unix seconds).

    ``user_id`` is ``""`` for a session bound to no user (admin listings only). ``last_seen`` is
    kept current at most once per ``STATEMODES_USER_INDEX_INTERVAL``; ``expires`` is None and
    ``size`` 0 where the store cannot tell cheaply.
    """

    session_key: str
    user_id: str
    created: float
    last_seen: float
    expires: float | None
    ip: str | None = None
    user_agent: str | None = None
    locked: bool = False
    lock_age: float = 0.0
    size: int = 0
