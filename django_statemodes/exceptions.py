"""Every exception django-statemodes raises, in one place.

The state server's own errors (``ProtocolError`` and its two sides, ``SnapshotError``,
``StoreFull``) are defined Django-free in ``stateserver/errors.py``, since the daemon runs
without Django, and re-exported here.
"""

from __future__ import annotations

from django.contrib.sessions.backends.base import UpdateError
from django.core.exceptions import ImproperlyConfigured, SynchronousOnlyOperation

from django_statemodes.stateserver.errors import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SnapshotError,
    StoreFull,
)

__all__ = [
    "LocalProtocolError",
    "MalformedSegment",
    "ProtocolError",
    "ProviderNotFound",
    "RemoteProtocolError",
    "SQLStateNotInstalled",
    "SessionImportError",
    "SessionLockLost",
    "SessionPoolExhausted",
    "SessionQueueFull",
    "SessionStateDisabled",
    "SessionStateReadOnly",
    "SessionStateSyncInAsync",
    "SessionStoreFull",
    "SessionStoreUnavailable",
    "SessionTooLarge",
    "SessionValueError",
    "SnapshotError",
    "StateModesError",
    "StateServerError",
    "StateServerFull",
    "StateServerProtocolError",
    "StateServerUnavailable",
    "StoreFull",
]

#: What ProviderNotFound adds to its message (and system check E007 gives as its hint).
PROVIDER_HINT = (
    "Set STATEMODES_CUSTOM_PROVIDER to the dotted path of a SessionStateProvider subclass, "
    "e.g. 'django_statemodes.providers.redis.RedisProvider'."
)


class StateModesError(Exception):
    """Base class for every error of django-statemodes."""


class SessionStateDisabled(StateModesError):
    """Raised when a view or site with sessions disabled touches ``request.session``."""


class SessionStateReadOnly(StateModesError):
    """Raised when a ReadOnly view (or a released session) tries to change the session."""


class SessionValueError(StateModesError, TypeError):
    """Raised where a value that the store cannot serialize is put in the session."""


class SessionTooLarge(StateModesError, ValueError):
    """Raised when a value or a whole session exceeds ``STATEMODES_MAX_SESSION_SIZE``."""


class SessionLockLost(UpdateError):
    """Raised when a write is refused because the lock was broken after the lock timeout."""


class SessionQueueFull(StateModesError):
    """Raised when more than ``STATEMODES_LOCK_QUEUE_LIMIT`` requests wait for one session."""


class SessionStoreUnavailable(StateModesError):
    """Raised when the session store cannot be reached; the middleware answers 503."""

    #: The setting a site owner should check, named in the 503 page and the log.
    setting: str = "SESSION_ENGINE"

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        if setting is not None:
            self.setting = setting


class SessionStoreFull(SessionStoreUnavailable):
    """Raised when InProc cannot take a new session: at its bound, and every session locked.

    A ``SessionStoreUnavailable``: the middleware answers 503 with ``Retry-After``, as the
    condition ends on its own when a request finishes and its session may be evicted.
    """

    setting = "STATEMODES_INPROC_MAX_SESSIONS"


class SessionPoolExhausted(SessionStoreUnavailable):
    """Raised when every store connection of the process stayed busy for the allowed wait.

    A ``SessionStoreUnavailable``: the middleware answers 503 with ``Retry-After``.
    """

    setting = "STATEMODES_MAX_CONNECTIONS"


class SessionStateSyncInAsync(StateModesError, SynchronousOnlyOperation):
    """Raised when the blocking session API reaches the store from a running event loop.

    Django's ``SynchronousOnlyOperation`` for sessions: a lock wait there would freeze every
    request of the worker. The message names the ``a``-prefixed method to await instead.
    """


class StateServerError(StateModesError):
    """Base class for errors talking to the state server."""


class StateServerUnavailable(StateServerError, SessionStoreUnavailable):
    """Raised when the state server cannot be reached within the network timeout."""

    setting = "STATEMODES_STATE_CONNECTION"


class StateServerProtocolError(StateServerError):
    """Raised when the state server answers something the protocol does not allow."""


class StateServerFull(StateServerError, SessionStoreUnavailable):
    """The state server refused a write: it reached its ``--max-memory`` bound."""

    setting = "--max-memory"


class SQLStateNotInstalled(SessionStoreUnavailable):
    """Raised when the session-state tables are missing from the database."""

    setting = "STATEMODES_SQL_DATABASE"


class SessionImportError(StateModesError):
    """Sessions cannot be imported from, or into, the engines named (the message says why)."""


class ProviderNotFound(ImproperlyConfigured):
    """Raised when ``STATEMODES_CUSTOM_PROVIDER`` does not name a provider class.

    ``args[0]`` is the problem alone (what system check E007 reports, with ``PROVIDER_HINT`` as
    its hint); ``str()`` adds the hint.
    """

    def __str__(self) -> str:
        return f"{self.args[0]} {PROVIDER_HINT}"


class MalformedSegment(ValueError):
    """A cookieless URL segment whose tokens make no sense (answered with a 400)."""
