"""The exceptions django-statemodes raises."""

from __future__ import annotations

from django.contrib.sessions.backends.base import UpdateError


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


class StateServerError(StateModesError):
    """Base class for errors talking to the state server."""


class StateServerUnavailable(StateServerError, SessionStoreUnavailable):
    """Raised when the state server cannot be reached within the network timeout."""

    setting = "STATEMODES_STATE_CONNECTION"


class StateServerProtocolError(StateServerError):
    """Raised when the state server answers something the protocol does not allow."""
