"""The daemon side's errors: the wire protocol's, the snapshot's and the memory store's.

Django-free, like everything the state server runs; ``django_statemodes.exceptions`` re-exports
them beside the errors a Django site sees.
"""

from __future__ import annotations

import enum

__all__ = [
    "ErrorCode",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "SnapshotError",
    "StoreFull",
]


class ErrorCode(enum.IntEnum):
    """Codes of ``Error`` replies (documented in docs/stateserver-protocol.md)."""

    BAD_FRAME = 1
    UNSUPPORTED_VERSION = 2
    AUTH_REQUIRED = 3
    AUTH_FAILED = 4
    FRAME_TOO_LARGE = 5
    STORE_FULL = 6
    UNKNOWN_TYPE = 7
    NOT_READY = 8
    SHUTTING_DOWN = 9
    INTERNAL = 10
    BAD_REQUEST = 11


class ProtocolError(Exception):
    """The protocol was broken; the connection cannot be used any further."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_FRAME) -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids (a bug in our adapter or caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids (garbage, an oversized frame, ...)."""


class SnapshotError(Exception):
    """The snapshot file cannot be read; the server refuses to start rather than lose it."""


class StoreFull(Exception):
    """Raised when an item cannot be stored within the store's bounds."""
