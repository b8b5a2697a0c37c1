"""The state server's wire protocol, sans-IO: bytes in, events out (the h11 shape).

No socket, asyncio or Django here: the blocking client, the asyncio client and the asyncio server
are thin adapters that move bytes between a socket and a ``Connection``. The format is specified
in ``docs/stateserver-protocol.md``; this module is its reference implementation.

Every frame is ``length:u32 | type:u8 | request_id:u32 | body`` in network byte order, where
``length`` counts the bytes after itself (type, request id and body). A peer refuses frames longer
than ``max_frame_size`` before buffering them, so a connection never holds more than one frame
plus one read of bytes.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from .errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "CLIENT",
    "CLOSED",
    "DEFAULT_MAX_FRAME_SIZE",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "SERVER",
    "Connection",
    "ErrorCode",
    "Event",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
]

PROTOCOL_VERSION: Final = 2
MIN_PROTOCOL_VERSION: Final = 1
#: The version that added the index of sessions by user (BIND_USER to LIST_SESSIONS, SESSIONS).
USER_INDEX_VERSION: Final = 2
# Room for STATEMODES_MAX_SESSION_SIZE (4 MiB by default) plus headers, with margin.
DEFAULT_MAX_FRAME_SIZE: Final = 8 * 1024 * 1024
# Bytes a peer may send beyond one frame before the receiver drains its events (a read's worth).
RECEIVE_SLACK: Final = 1024 * 1024
NONCE_SIZE: Final = 16
MAX_KEY_LENGTH: Final = 255
MAX_APPLICATION_LENGTH: Final = 1024
NO_LOCK: Final = (1 << 64) - 1  # lock_id=None on the wire
NO_DATA: Final = (1 << 32) - 1  # data=None inside an expired-items batch
#: Bounds of the index's strings on the wire, in UTF-8 bytes (memory.py keeps the same ones).
MAX_USER_ID_LENGTH: Final = 255
MAX_IP_LENGTH: Final = 255
MAX_USER_AGENT_LENGTH: Final = 4096
#: Most sessions one SESSIONS reply carries; clients page past it.
MAX_SESSIONS_PAGE: Final = 1000

_HEADER = struct.Struct("!IBI")
_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_WELCOME = struct.Struct("!BBB16s")
_HELLO = struct.Struct("!B16sB")
_ITEM = struct.Struct("!BQdI")
_SET = struct.Struct("!BQI")
_LOCK = struct.Struct("!Q")
_WAIT = struct.Struct("!QI")
_ERROR = struct.Struct("!H")
_LIST = struct.Struct("!BIH")
_SESSIONS = struct.Struct("!QI")
_SESSION = struct.Struct("!ddddIB")
_TIMES = struct.Struct("!dd")
HEADER_SIZE: Final = _HEADER.size
# length counts type and request id too.
_MIN_LENGTH: Final = HEADER_SIZE - _U32.size
#: The longest HELLO (a 255-byte proof, a 1024-byte application name): the largest frame a server
#: accepts before the handshake, so an unauthenticated connection never holds more than this of a
#: frame (it used to be able to hold an almost complete 8 MiB one).
MAX_HELLO_FRAME_SIZE: Final = _MIN_LENGTH + _HELLO.size + 255 + _U16.size + MAX_APPLICATION_LENGTH


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


CLIENT: Final = Role.CLIENT
SERVER: Final = Role.SERVER


class Status(enum.Enum):
    """What ``next_event`` returns when it has no event."""

    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


NEED_DATA: Final = Status.NEED_DATA
CLOSED: Final = Status.CLOSED


# Events. Handshake events carry no request id; every other event does. They are plain slotted
# dataclasses, not frozen ones: a frozen dataclass costs several times more to build, and a few are
# built per request on each side. Treat them as immutable all the same.


@dataclass(slots=True)
class Event:
    TYPE: ClassVar[int] = 0


@dataclass(slots=True)
class Welcome(Event):
    """Server -> client, first frame: versions spoken, a fresh nonce, whether a secret is needed."""

    TYPE: ClassVar[int] = 0x01
    min_version: int = MIN_PROTOCOL_VERSION
    max_version: int = PROTOCOL_VERSION
    nonce: bytes = bytes(NONCE_SIZE)
    auth_required: bool = False


@dataclass(slots=True)
class Hello(Event):
    """Client -> server: the version chosen, the application namespace, the secret's proof."""

    TYPE: ClassVar[int] = 0x02
    version: int = PROTOCOL_VERSION
    application: str = "default"
    client_nonce: bytes = bytes(NONCE_SIZE)
    proof: bytes = b""


@dataclass(slots=True)
class Ready(Event):
    """Server -> client: the handshake succeeded; ``proof`` shows the server knows the secret."""

    TYPE: ClassVar[int] = 0x03
    proof: bytes = b""


@dataclass(slots=True)
class Request(Event):
    request_id: int = 0


@dataclass(slots=True)
class KeyRequest(Request):
    key: str = ""


@dataclass(slots=True)
class Get(KeyRequest):
    TYPE: ClassVar[int] = 0x10


@dataclass(slots=True)
class GetExclusive(KeyRequest):
    TYPE: ClassVar[int] = 0x11


@dataclass(slots=True)
class SetAndRelease(KeyRequest):
    TYPE: ClassVar[int] = 0x12
    data: bytes | None = None
    lock_id: int | None = None
    timeout: int = 0
    new_item: bool = False
    release: bool = True


@dataclass(slots=True)
class Release(KeyRequest):
    TYPE: ClassVar[int] = 0x13
    lock_id: int = 0


@dataclass(slots=True)
class Remove(KeyRequest):
    TYPE: ClassVar[int] = 0x14
    lock_id: int | None = None


@dataclass(slots=True)
class ResetTimeout(KeyRequest):
    TYPE: ClassVar[int] = 0x15


@dataclass(slots=True)
class CreateUninitialized(KeyRequest):
    TYPE: ClassVar[int] = 0x16
    timeout: int = 0


@dataclass(slots=True)
class PurgeExpired(Request):
    TYPE: ClassVar[int] = 0x17
    with_data: bool = False
    dry_run: bool = False


@dataclass(slots=True)
class Wait(KeyRequest):
    """Answered by ``Released`` once the lock ``lock_id`` ends, or when ``timeout`` passes."""

    TYPE: ClassVar[int] = 0x18
    lock_id: int = 0
    timeout: float = 0.0


@dataclass(slots=True)
class Ping(Request):
    TYPE: ClassVar[int] = 0x19
    payload: bytes = b""


@dataclass(slots=True)
class Stats(Request):
    TYPE: ClassVar[int] = 0x1A


@dataclass(slots=True)
class Purge(Request):
    """Remove every session of the connection's application."""

    TYPE: ClassVar[int] = 0x1B


# Version 2: the index of sessions by user.


@dataclass(slots=True)
class BindUser(KeyRequest):
    """Bind a live session to ``user_id``; answered by RESULT 1, or 0 without the session."""

    TYPE: ClassVar[int] = 0x30
    user_id: str = ""
    ip: str | None = None
    user_agent: str | None = None
    #: The binding's times when it is carried from another server (a farm change), else None.
    created: float | None = None
    last_seen: float | None = None


@dataclass(slots=True)
class TouchUser(KeyRequest):
    """Set a bound session's last-seen time (and its ip/user agent unless None)."""

    TYPE: ClassVar[int] = 0x31
    ip: str | None = None
    user_agent: str | None = None


@dataclass(slots=True)
class UnbindUser(KeyRequest):
    TYPE: ClassVar[int] = 0x32


@dataclass(slots=True)
class ListSessions(Request):
    """A page of the application's live sessions, or of one user's (``user_id``)."""

    TYPE: ClassVar[int] = 0x33
    user_id: str | None = None
    offset: int = 0
    limit: int = MAX_SESSIONS_PAGE


@dataclass(slots=True)
class SessionInfoRequest(KeyRequest):
    """What the index knows of one session: SESSIONS with that session, or none."""

    TYPE: ClassVar[int] = 0x34


@dataclass(slots=True)
class Reply(Event):
    request_id: int = 0


@dataclass(slots=True)
class Item(Reply):
    """Answer to Get and GetExclusive (``StateItem`` on the wire)."""

    TYPE: ClassVar[int] = 0x20
    data: bytes | None = None
    locked: bool = False
    lock_id: int = 0
    lock_age: float = 0.0
    timeout: int = 0
    initialize: bool = False


@dataclass(slots=True)
class NotFound(Reply):
    TYPE: ClassVar[int] = 0x21


@dataclass(slots=True)
class Result(Reply):
    """A boolean (0/1) or a count."""

    TYPE: ClassVar[int] = 0x22
    value: int = 0


@dataclass(slots=True)
class ExpiredBatch(Reply):
    """Part of the answer to PurgeExpired(with_data=True); a ``Result`` with the count ends it."""

    TYPE: ClassVar[int] = 0x23
    items: tuple[tuple[str, bytes | None], ...] = ()


@dataclass(slots=True)
class Released(Reply):
    """Answer to Wait: ``released`` is False when the wait timed out."""

    TYPE: ClassVar[int] = 0x24
    released: bool = True


@dataclass(slots=True)
class Pong(Reply):
    TYPE: ClassVar[int] = 0x25
    payload: bytes = b""


@dataclass(slots=True)
class StatsReply(Reply):
    TYPE: ClassVar[int] = 0x26
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class SessionEntry:
    """One session in a SESSIONS reply (times are the server's unix seconds)."""

    key: str
    user_id: str
    created: float
    last_seen: float
    expires: float
    lock_age: float
    size: int
    locked: bool
    ip: str | None
    user_agent: str | None


@dataclass(slots=True)
class Sessions(Reply):
    """Answer to LIST_SESSIONS: a page of sessions and the total they were taken from."""

    TYPE: ClassVar[int] = 0x27
    total: int = 0
    sessions: tuple[SessionEntry, ...] = ()


@dataclass(slots=True)
class Error(Reply):
    """An error answer; request id 0 when it concerns the connection, which then closes."""

    TYPE: ClassVar[int] = 0x7F
    code: int = ErrorCode.INTERNAL
    message: str = ""


# Encoding. Each encoder returns the body; decoders take (request_id, body).


def _key(key: str) -> bytes:
    raw = key.encode("ascii")
    if not 0 < len(raw) <= MAX_KEY_LENGTH:
        raise LocalProtocolError(f"session key of {len(raw)} bytes (1 to {MAX_KEY_LENGTH})")
    return _U8.pack(len(raw)) + raw


def _read_key(body: bytes, offset: int) -> tuple[str, int]:
    if offset >= len(body):
        raise RemoteProtocolError("frame ends before its session key")
    length = body[offset]
    end = offset + 1 + length
    if length == 0 or end > len(body):
        raise RemoteProtocolError("bad session key length")
    try:
        return body[offset + 1 : end].decode("ascii"), end
    except UnicodeDecodeError:
        raise RemoteProtocolError("session key is not ASCII") from None


def _lock(lock_id: int | None) -> int:
    if lock_id is None:
        return NO_LOCK
    if not 0 <= lock_id < NO_LOCK:
        raise LocalProtocolError(f"lock id {lock_id} out of range")
    return lock_id


def _u32(value: int, what: str) -> int:
    if not 0 <= value < 1 << 32:
        raise LocalProtocolError(f"{what} {value} out of range")
    return value


def _e_key(event: KeyRequest) -> bytes:
    return _key(event.key)


def _e_set(event: SetAndRelease) -> bytes:
    flags = event.new_item | event.release << 1 | (event.data is None) << 2
    head = _SET.pack(flags, _lock(event.lock_id), _u32(event.timeout, "timeout"))
    return head + _key(event.key) + (event.data or b"")


def _e_locked_key(event: Release | Remove) -> bytes:
    return _LOCK.pack(_lock(event.lock_id)) + _key(event.key)


def _e_create(event: CreateUninitialized) -> bytes:
    return _U32.pack(_u32(event.timeout, "timeout")) + _key(event.key)


def _e_wait(event: Wait) -> bytes:
    millis = _u32(max(0, round(event.timeout * 1000)), "wait timeout")
    return _WAIT.pack(_lock(event.lock_id), millis) + _key(event.key)


def _e_item(event: Item) -> bytes:
    flags = event.locked | event.initialize << 1 | (event.data is None) << 2
    head = _ITEM.pack(flags, event.lock_id, event.lock_age, _u32(event.timeout, "timeout"))
    return head + (event.data or b"")


def _e_empty(event: Event) -> bytes:
    return b""


def _e_result(event: Result) -> bytes:
    return _U64.pack(event.value)


def _e_payload(event: Ping | Pong) -> bytes:
    return event.payload


def _e_released(event: Released) -> bytes:
    return _U8.pack(event.released)


def _e_purge_expired(event: PurgeExpired) -> bytes:
    return _U8.pack(event.with_data | event.dry_run << 1)


def _e_expired(event: ExpiredBatch) -> bytes:
    parts = [_U32.pack(len(event.items))]
    for key_, data in event.items:
        parts.append(_key(key_))
        parts.append(_U32.pack(NO_DATA if data is None else len(data)))
        parts.append(data or b"")
    return b"".join(parts)


def _e_stats(event: StatsReply) -> bytes:
    return json.dumps(event.stats, separators=(",", ":")).encode()


def _text(value: str, limit: int, what: str, size: struct.Struct = _U8) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > limit:
        raise LocalProtocolError(f"{what} of {len(raw)} bytes is over the limit of {limit} bytes")
    return size.pack(len(raw)) + raw


def _read_text(body: bytes, offset: int, what: str, size: struct.Struct = _U8) -> tuple[str, int]:
    _need(body, offset + size.size, what)
    (length,) = size.unpack_from(body, offset)
    start = offset + size.size
    end = start + length
    if end > len(body):
        raise RemoteProtocolError(f"{what} runs past the frame")
    try:
        return body[start:end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{what} is not UTF-8") from None


def _client_details(ip: str | None, user_agent: str | None) -> bytes:
    flags = (ip is not None) | (user_agent is not None) << 1
    return (
        _U8.pack(flags)
        + _text(ip or "", MAX_IP_LENGTH, "IP address")
        + _text(user_agent or "", MAX_USER_AGENT_LENGTH, "user agent", _U16)
    )


def _read_client_details(
    body: bytes, offset: int, allowed: int = 3
) -> tuple[str | None, str | None, int, int]:
    """Read ``client``; return ip, user agent, the offset after it and its flags."""
    _need(body, offset + 1, "client details")
    flags = _flags(body[offset], allowed)
    ip, offset = _read_text(body, offset + 1, "IP address")
    user_agent, offset = _read_text(body, offset, "user agent", _U16)
    return (ip if flags & 1 else None), (user_agent if flags & 2 else None), offset, flags


def _user_id(user_id: str) -> bytes:
    if not user_id:
        raise LocalProtocolError("a user id is a non-empty string")
    return _text(user_id, MAX_USER_ID_LENGTH, "user id")


def _e_bind(event: BindUser) -> bytes:
    head = _key(event.key) + _user_id(event.user_id)
    details = _client_details(event.ip, event.user_agent)
    if event.created is None:
        return head + details
    # Flag bit 2: the binding's own times follow (a session carried from another server).
    last_seen = event.created if event.last_seen is None else event.last_seen
    return head + bytes([details[0] | 4]) + details[1:] + _TIMES.pack(event.created, last_seen)


def _e_touch(event: TouchUser) -> bytes:
    return _key(event.key) + _client_details(event.ip, event.user_agent)


def _e_list(event: ListSessions) -> bytes:
    limit = min(max(0, event.limit), MAX_SESSIONS_PAGE)
    head = _LIST.pack(event.user_id is not None, _u32(event.offset, "offset"), limit)
    return head if event.user_id is None else head + _user_id(event.user_id)


def _e_sessions(event: Sessions) -> bytes:
    parts = [_SESSIONS.pack(event.total, len(event.sessions))]
    for entry in event.sessions:
        parts.append(_key(entry.key))
        parts.append(_text(entry.user_id, MAX_USER_ID_LENGTH, "user id"))
        parts.append(
            _SESSION.pack(
                entry.created,
                entry.last_seen,
                entry.expires,
                entry.lock_age,
                min(entry.size, NO_DATA),
                entry.locked,
            )
        )
        parts.append(_client_details(entry.ip, entry.user_agent))
    return b"".join(parts)


def _e_error(event: Error) -> bytes:
    return _ERROR.pack(event.code) + event.message.encode("utf-8", "replace")


def _e_welcome(event: Welcome) -> bytes:
    if len(event.nonce) != NONCE_SIZE:
        raise LocalProtocolError(f"nonce must be {NONCE_SIZE} bytes")
    return _WELCOME.pack(event.min_version, event.max_version, event.auth_required, event.nonce)


def _e_hello(event: Hello) -> bytes:
    app = event.application.encode("utf-8")
    if len(event.client_nonce) != NONCE_SIZE or len(event.proof) > 255:
        raise LocalProtocolError("bad client nonce or proof size")
    if not 0 < len(app) <= MAX_APPLICATION_LENGTH:
        raise LocalProtocolError("application name must be 1 to 1024 bytes of UTF-8")
    head = _HELLO.pack(event.version, event.client_nonce, len(event.proof))
    return head + event.proof + _U16.pack(len(app)) + app


def _e_ready(event: Ready) -> bytes:
    return _U8.pack(len(event.proof)) + event.proof


# The body encoder of each event type: one dictionary lookup per frame sent.
_ENCODERS: dict[type[Event], Any] = {
    Get: _e_key,
    GetExclusive: _e_key,
    ResetTimeout: _e_key,
    SetAndRelease: _e_set,
    Release: _e_locked_key,
    Remove: _e_locked_key,
    CreateUninitialized: _e_create,
    Wait: _e_wait,
    Item: _e_item,
    NotFound: _e_empty,
    Stats: _e_empty,
    Purge: _e_empty,
    Result: _e_result,
    Ping: _e_payload,
    Pong: _e_payload,
    Released: _e_released,
    PurgeExpired: _e_purge_expired,
    ExpiredBatch: _e_expired,
    StatsReply: _e_stats,
    Error: _e_error,
    Welcome: _e_welcome,
    Hello: _e_hello,
    Ready: _e_ready,
    BindUser: _e_bind,
    TouchUser: _e_touch,
    UnbindUser: _e_key,
    SessionInfoRequest: _e_key,
    ListSessions: _e_list,
    Sessions: _e_sessions,
}


def _need(body: bytes, size: int, what: str) -> None:
    if len(body) < size:
        raise RemoteProtocolError(f"{what} frame too short ({len(body)} bytes)")


def _exact_key(body: bytes, offset: int) -> str:
    key, end = _read_key(body, offset)
    if end != len(body):
        raise RemoteProtocolError("trailing bytes after the session key")
    return key


def _flags(value: int, allowed: int) -> int:
    if value & ~allowed:
        raise RemoteProtocolError(f"unknown flags {value:#x}")
    return value


def _lock_in(value: int) -> int | None:
    return None if value == NO_LOCK else value


def _d_get(rid: int, body: bytes) -> Event:
    return Get(rid, _exact_key(body, 0))


def _d_get_exclusive(rid: int, body: bytes) -> Event:
    return GetExclusive(rid, _exact_key(body, 0))


def _d_set(rid: int, body: bytes) -> Event:
    _need(body, _SET.size, "SET")
    flags, lock_id, timeout = _SET.unpack_from(body)
    _flags(flags, 7)
    key, end = _read_key(body, _SET.size)
    if flags & 4:
        if end != len(body):
            raise RemoteProtocolError("SET without data has trailing bytes")
        data = None
    else:
        data = body[end:]
    return SetAndRelease(
        rid, key, data, _lock_in(lock_id), timeout, bool(flags & 1), bool(flags & 2)
    )


def _d_release(rid: int, body: bytes) -> Event:
    _need(body, _LOCK.size, "RELEASE")
    (lock_id,) = _LOCK.unpack_from(body)
    if lock_id == NO_LOCK:
        raise RemoteProtocolError("RELEASE needs a lock id")
    return Release(rid, _exact_key(body, _LOCK.size), lock_id)


def _d_remove(rid: int, body: bytes) -> Event:
    _need(body, _LOCK.size, "REMOVE")
    (lock_id,) = _LOCK.unpack_from(body)
    return Remove(rid, _exact_key(body, _LOCK.size), _lock_in(lock_id))


def _d_reset(rid: int, body: bytes) -> Event:
    return ResetTimeout(rid, _exact_key(body, 0))


def _d_create(rid: int, body: bytes) -> Event:
    _need(body, _U32.size, "CREATE_UNINITIALIZED")
    (timeout,) = _U32.unpack_from(body)
    return CreateUninitialized(rid, _exact_key(body, _U32.size), timeout)


def _d_purge_expired(rid: int, body: bytes) -> Event:
    if len(body) != 1:
        raise RemoteProtocolError("PURGE_EXPIRED takes one flags byte")
    flags = _flags(body[0], 3)
    return PurgeExpired(rid, bool(flags & 1), bool(flags & 2))


def _d_wait(rid: int, body: bytes) -> Event:
    _need(body, _WAIT.size, "WAIT")
    lock_id, millis = _WAIT.unpack_from(body)
    return Wait(rid, _exact_key(body, _WAIT.size), lock_id, millis / 1000)


def _d_bind(rid: int, body: bytes) -> Event:
    key, offset = _read_key(body, 0)
    user_id, offset = _read_text(body, offset, "user id")
    ip, user_agent, offset, flags = _read_client_details(body, offset, 7)
    created = last_seen = None
    if flags & 4:
        _need(body, offset + _TIMES.size, "BIND_USER")
        created, last_seen = _TIMES.unpack_from(body, offset)
        offset += _TIMES.size
    if offset != len(body):
        raise RemoteProtocolError("trailing bytes after BIND_USER")
    return BindUser(rid, key, user_id, ip, user_agent, created, last_seen)


def _d_touch(rid: int, body: bytes) -> Event:
    key, offset = _read_key(body, 0)
    ip, user_agent, offset, _ = _read_client_details(body, offset)
    if offset != len(body):
        raise RemoteProtocolError("trailing bytes after TOUCH_USER")
    return TouchUser(rid, key, ip, user_agent)


def _d_unbind(rid: int, body: bytes) -> Event:
    return UnbindUser(rid, _exact_key(body, 0))


def _d_session_info(rid: int, body: bytes) -> Event:
    return SessionInfoRequest(rid, _exact_key(body, 0))


def _d_list(rid: int, body: bytes) -> Event:
    _need(body, _LIST.size, "LIST_SESSIONS")
    flags, offset, limit = _LIST.unpack_from(body)
    _flags(flags, 1)
    user_id: str | None = None
    end = _LIST.size
    if flags & 1:
        user_id, end = _read_text(body, end, "user id")
    if end != len(body):
        raise RemoteProtocolError("trailing bytes after LIST_SESSIONS")
    return ListSessions(rid, user_id, offset, min(limit, MAX_SESSIONS_PAGE))


def _d_sessions(rid: int, body: bytes) -> Event:
    _need(body, _SESSIONS.size, "SESSIONS")
    total, count = _SESSIONS.unpack_from(body)
    offset = _SESSIONS.size
    entries: list[SessionEntry] = []
    for _ in range(count):
        key, offset = _read_key(body, offset)
        user_id, offset = _read_text(body, offset, "user id")
        _need(body, offset + _SESSION.size, "SESSIONS")
        created, last_seen, expires, lock_age, size, locked = _SESSION.unpack_from(body, offset)
        if locked > 1:
            raise RemoteProtocolError("bad locked flag in SESSIONS")
        ip, user_agent, offset, _ = _read_client_details(body, offset + _SESSION.size)
        entries.append(
            SessionEntry(
                key,
                user_id,
                created,
                last_seen,
                expires,
                lock_age,
                size,
                bool(locked),
                ip,
                user_agent,
            )
        )
    if offset != len(body):
        raise RemoteProtocolError("trailing bytes after the sessions")
    return Sessions(rid, total, tuple(entries))


def _d_ping(rid: int, body: bytes) -> Event:
    return Ping(rid, body)


def _empty(cls: type[Request] | type[Reply]) -> Any:
    def decode(rid: int, body: bytes) -> Event:
        if body:
            raise RemoteProtocolError(f"{cls.__name__} frame has a body")
        return cls(rid)

    return decode


def _d_item(rid: int, body: bytes) -> Event:
    _need(body, _ITEM.size, "ITEM")
    flags, lock_id, lock_age, timeout = _ITEM.unpack_from(body)
    _flags(flags, 7)
    if flags & 4:
        if len(body) != _ITEM.size:
            raise RemoteProtocolError("ITEM without data has trailing bytes")
        data = None
    else:
        data = body[_ITEM.size :]
    return Item(rid, data, bool(flags & 1), lock_id, lock_age, timeout, bool(flags & 2))


def _d_result(rid: int, body: bytes) -> Event:
    if len(body) != _U64.size:
        raise RemoteProtocolError("RESULT takes 8 bytes")
    return Result(rid, _U64.unpack(body)[0])


def _d_expired(rid: int, body: bytes) -> Event:
    _need(body, _U32.size, "EXPIRED")
    (count,) = _U32.unpack_from(body)
    offset = _U32.size
    items: list[tuple[str, bytes | None]] = []
    for _ in range(count):
        key, offset = _read_key(body, offset)
        _need(body, offset + _U32.size, "EXPIRED")
        (size,) = _U32.unpack_from(body, offset)
        offset += _U32.size
        if size == NO_DATA:
            items.append((key, None))
            continue
        if offset + size > len(body):
            raise RemoteProtocolError("EXPIRED item runs past the frame")
        items.append((key, body[offset : offset + size]))
        offset += size
    if offset != len(body):
        raise RemoteProtocolError("trailing bytes after the expired items")
    return ExpiredBatch(rid, tuple(items))


def _d_released(rid: int, body: bytes) -> Event:
    if len(body) != 1 or body[0] > 1:
        raise RemoteProtocolError("RELEASED takes one byte, 0 or 1")
    return Released(rid, bool(body[0]))


def _d_pong(rid: int, body: bytes) -> Event:
    return Pong(rid, body)


def _d_stats(rid: int, body: bytes) -> Event:
    try:
        stats = json.loads(body)
    except ValueError:
        raise RemoteProtocolError("STATS reply is not JSON") from None
    if not isinstance(stats, dict):
        raise RemoteProtocolError("STATS reply is not a JSON object")
    return StatsReply(rid, stats)


def _d_error(rid: int, body: bytes) -> Event:
    _need(body, _ERROR.size, "ERROR")
    (code,) = _ERROR.unpack_from(body)
    return Error(rid, code, body[_ERROR.size :].decode("utf-8", "replace"))


def _d_welcome(rid: int, body: bytes) -> Event:
    if len(body) != _WELCOME.size:
        raise RemoteProtocolError("WELCOME frame has the wrong size")
    low, high, auth, nonce = _WELCOME.unpack(body)
    if auth > 1 or low > high:
        raise RemoteProtocolError("bad WELCOME frame")
    return Welcome(low, high, nonce, bool(auth))


def _d_hello(rid: int, body: bytes) -> Event:
    _need(body, _HELLO.size, "HELLO")
    version, client_nonce, proof_length = _HELLO.unpack_from(body)
    offset = _HELLO.size + proof_length
    _need(body, offset + _U16.size, "HELLO")
    proof = body[_HELLO.size : offset]
    (app_length,) = _U16.unpack_from(body, offset)
    offset += _U16.size
    if not 0 < app_length <= MAX_APPLICATION_LENGTH or offset + app_length != len(body):
        raise RemoteProtocolError("bad application name length in HELLO")
    try:
        application = body[offset:].decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("application name is not UTF-8") from None
    return Hello(version, application, client_nonce, proof)


def _d_ready(rid: int, body: bytes) -> Event:
    if not body or body[0] != len(body) - 1:
        raise RemoteProtocolError("bad READY frame")
    return Ready(body[1:])


_HANDSHAKE_DECODERS = {Welcome.TYPE: _d_welcome, Hello.TYPE: _d_hello, Ready.TYPE: _d_ready}
# What each side may receive.
_FROM_CLIENT = {
    Get.TYPE: _d_get,
    GetExclusive.TYPE: _d_get_exclusive,
    SetAndRelease.TYPE: _d_set,
    Release.TYPE: _d_release,
    Remove.TYPE: _d_remove,
    ResetTimeout.TYPE: _d_reset,
    CreateUninitialized.TYPE: _d_create,
    PurgeExpired.TYPE: _d_purge_expired,
    Wait.TYPE: _d_wait,
    Ping.TYPE: _d_ping,
    Stats.TYPE: _empty(Stats),
    Purge.TYPE: _empty(Purge),
    BindUser.TYPE: _d_bind,
    TouchUser.TYPE: _d_touch,
    UnbindUser.TYPE: _d_unbind,
    SessionInfoRequest.TYPE: _d_session_info,
    ListSessions.TYPE: _d_list,
}
_FROM_SERVER = {
    Item.TYPE: _d_item,
    NotFound.TYPE: _empty(NotFound),
    Result.TYPE: _d_result,
    ExpiredBatch.TYPE: _d_expired,
    Released.TYPE: _d_released,
    Pong.TYPE: _d_pong,
    StatsReply.TYPE: _d_stats,
    Sessions.TYPE: _d_sessions,
    Error.TYPE: _d_error,
}


_REQUEST_TYPES: frozenset[type[Event]] = frozenset(
    {Get, GetExclusive, SetAndRelease, Release, Remove, ResetTimeout, CreateUninitialized}
    | {PurgeExpired, Wait, Ping, Stats, Purge, BindUser, TouchUser, UnbindUser, ListSessions}
    | {SessionInfoRequest}
)
_REPLY_TYPES: frozenset[type[Event]] = frozenset(
    {Item, NotFound, Result, ExpiredBatch, Released, Pong, StatsReply, Sessions, Error}
)


class Connection:
    """One side of a state server connection.

    Feed received bytes to ``receive_data`` (``b""`` at end of file), pull events with
    ``next_event`` until it returns ``NEED_DATA`` (or ``CLOSED``), and turn events into bytes
    with ``send``. The server sends ``Welcome`` first; the client answers ``Hello`` and may
    pipeline requests right behind it; the server answers ``Ready`` or an ``Error``.

    Args:
        role: ``CLIENT`` or ``SERVER``: which side we are.
        max_frame_size: longest frame accepted from the peer (and sent), in bytes.
    """

    def __init__(self, role: Role, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.role = role
        self.max_frame_size = max_frame_size
        # The limit applied to the next frame received: a server takes only a HELLO-sized frame
        # until HELLO has arrived, then max_frame_size. A client keeps max_frame_size throughout.
        self._receive_limit = (
            min(max_frame_size, MAX_HELLO_FRAME_SIZE) if role is SERVER else max_frame_size
        )
        #: Most bytes held before ``next_event`` consumes them: one whole frame plus one read.
        self.max_buffer_size = max_frame_size + _U32.size + RECEIVE_SLACK
        self._buffer = bytearray()
        self._eof = False
        self._broken: RemoteProtocolError | None = None
        # Handshake progress: what we sent and received.
        #: The version HELLO chose (sent by a client, received by a server).
        self.version = MIN_PROTOCOL_VERSION
        self.welcomed = False  # Welcome sent (server) or received (client)
        self.hello_done = False  # Hello received (server) or sent (client)
        self.ready = False  # Ready sent (server) or received (client)
        if role is SERVER:
            self._receivable = _FROM_CLIENT
        else:
            self._receivable = _FROM_SERVER
        # Event types that need no handshake check any more (filled once the handshake is done).
        self._steady: frozenset[type[Event]] = frozenset()
        # Past the handshake, a frame's type alone picks its decoder (filled then too).
        self._steady_decoders: dict[int, Any] = {}

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events (bounded by one frame)."""
        return len(self._buffer)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the peer; ``b""`` means the peer closed the connection.

        ``data`` is copied: a caller may pass a view of a buffer it reuses for the next read.
        """
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("data received after end of file")
        if len(self._buffer) + len(data) > self.max_buffer_size:
            # The caller is not draining events: refuse rather than grow without bound.
            self._broken = RemoteProtocolError(
                f"more than {self.max_buffer_size} bytes received and not consumed",
                ErrorCode.FRAME_TOO_LARGE,
            )
            return
        self._buffer += data

    def next_event(self) -> Event | Status:
        """Return the next complete event, ``NEED_DATA`` or ``CLOSED``.

        Raises RemoteProtocolError when the peer broke the protocol; the error's ``code`` is the
        one to answer with, and every later call raises it again.
        """
        if self._broken is not None:
            raise self._broken
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            self._broken = exc
            raise

    def _next_event(self) -> Event | Status:
        buffer = self._buffer
        if len(buffer) < HEADER_SIZE:
            if self._eof:
                if buffer:
                    raise RemoteProtocolError("connection closed in the middle of a frame")
                return CLOSED
            if len(buffer) >= _U32.size:
                self._check_length(_U32.unpack_from(buffer)[0])
            return NEED_DATA
        length, type_, request_id = _HEADER.unpack_from(buffer)
        if not _MIN_LENGTH <= length <= self._receive_limit:
            self._check_length(length)
        end = length + _U32.size
        if len(buffer) < end:
            if self._eof:
                raise RemoteProtocolError("connection closed in the middle of a frame")
            return NEED_DATA
        with memoryview(buffer) as view:
            body = view[HEADER_SIZE:end].tobytes()  # one copy, not two
        if end == len(buffer):
            buffer.clear()  # the usual case: exactly one frame was read
        else:
            del buffer[:end]
        decoder = self._steady_decoders.get(type_)
        if decoder is not None:
            return decoder(request_id, body)  # type: ignore[no-any-return]
        return self._decode(type_, request_id, body)

    def _check_length(self, length: int) -> None:
        if length > self._receive_limit:
            before = "" if self._receive_limit == self.max_frame_size else " before the handshake"
            raise RemoteProtocolError(
                f"frame of {length} bytes is over the limit of {self._receive_limit} bytes"
                + before,
                ErrorCode.FRAME_TOO_LARGE,
            )
        if length < _MIN_LENGTH:
            raise RemoteProtocolError(f"frame length {length} is too short")

    def _decode(self, type_: int, request_id: int, body: bytes) -> Event:
        handshake = _HANDSHAKE_DECODERS.get(type_)
        if handshake is not None:
            return self._receive_handshake(type_, request_id, body)
        decoder = self._receivable.get(type_)
        if decoder is None:
            raise RemoteProtocolError(f"unknown frame type {type_:#04x}", ErrorCode.UNKNOWN_TYPE)
        if self.role is SERVER and not self.hello_done:
            raise RemoteProtocolError("request before HELLO", ErrorCode.NOT_READY)
        if self.role is CLIENT and not self.welcomed:
            raise RemoteProtocolError("reply before WELCOME", ErrorCode.NOT_READY)
        return decoder(request_id, body)  # type: ignore[no-any-return]

    def _receive_handshake(self, type_: int, request_id: int, body: bytes) -> Event:
        expected = Hello.TYPE if self.role is SERVER else Welcome.TYPE
        if self.role is CLIENT and self.welcomed and type_ == Ready.TYPE and not self.ready:
            expected = Ready.TYPE
        already = self.hello_done if self.role is SERVER else self.welcomed
        if type_ != expected or (already and type_ != Ready.TYPE) or request_id != 0:
            raise RemoteProtocolError(
                f"unexpected handshake frame {type_:#04x}", ErrorCode.NOT_READY
            )
        event = _HANDSHAKE_DECODERS[type_](request_id, body)
        if isinstance(event, Hello):
            self.hello_done = True
            self.version = event.version
            self._steady_decoders = self._receivable
            self._receive_limit = self.max_frame_size
        elif isinstance(event, Welcome):
            self.welcomed = True
            self._steady_decoders = self._receivable
        else:
            self.ready = True
        return event

    def send(self, event: Event) -> bytes:
        """Return the bytes of ``event``; raise LocalProtocolError if it may not be sent now."""
        # Fast path past the handshake: the event's kind alone decides (one set lookup).
        if type(event) not in self._steady:
            self._check_send(event)
        encoder = _ENCODERS.get(type(event))
        if encoder is None:
            raise LocalProtocolError(f"cannot send {type(event).__name__}")
        body: bytes = encoder(event)
        request_id = event.request_id if isinstance(event, (Request, Reply)) else 0
        length = len(body) + _MIN_LENGTH
        if length > self.max_frame_size:
            raise LocalProtocolError(
                f"frame of {length} bytes is over the limit of {self.max_frame_size} bytes"
            )
        if not 0 <= request_id < 1 << 32:
            raise LocalProtocolError(f"request id {request_id} out of range")
        return _HEADER.pack(length, event.TYPE, request_id) + body

    def _check_send(self, event: Event) -> None:
        if self.role is SERVER:
            if isinstance(event, Welcome):
                if self.welcomed:
                    raise LocalProtocolError("WELCOME sent twice")
                self.welcomed = True
            elif isinstance(event, Ready):
                if not self.hello_done or self.ready:
                    raise LocalProtocolError("READY must answer one HELLO")
                self.ready = True
            elif isinstance(event, Reply):
                if not self.welcomed:
                    raise LocalProtocolError("the server speaks first, with WELCOME")
                self._steady = _REPLY_TYPES
            else:
                raise LocalProtocolError(f"a server cannot send {type(event).__name__}")
            return
        if isinstance(event, Hello):
            if not self.welcomed or self.hello_done:
                raise LocalProtocolError("HELLO must answer one WELCOME")
            self.hello_done = True
            self.version = event.version
        elif isinstance(event, Request):
            if not self.hello_done:
                raise LocalProtocolError("send HELLO before any request")
            self._steady = _REQUEST_TYPES
        else:
            raise LocalProtocolError(f"a client cannot send {type(event).__name__}")


# The shared-secret handshake: HMAC-SHA256 over both nonces, so the secret never crosses the wire
# and a recorded exchange cannot be replayed (each side picks a fresh nonce per connection).


def client_proof(secret: bytes, nonce: bytes, client_nonce: bytes, application: str) -> bytes:
    """Return the HMAC a client sends in ``Hello`` to prove it knows the secret."""
    message = b"statemodes-client\x00" + nonce + client_nonce + application.encode("utf-8")
    return hmac.new(secret, message, hashlib.sha256).digest()


def server_proof(secret: bytes, nonce: bytes, client_nonce: bytes) -> bytes:
    """Return the HMAC a server sends in ``Ready`` to prove it knows the secret too."""
    message = b"statemodes-server\x00" + nonce + client_nonce
    return hmac.new(secret, message, hashlib.sha256).digest()
