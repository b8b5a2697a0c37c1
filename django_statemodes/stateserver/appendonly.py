"""The state server's append-only log (``--appendonly``): Redis's AOF with ``appendfsync everysec``.

Every acknowledged write is appended to ``PATH.aof`` (``PATH`` being ``--snapshot``) before its
reply is sent, so a ``kill -9`` loses nothing the kernel received; the file is fsynced once per
second from a worker thread, so a power loss or a kernel crash loses at most about a second.
The log is rewritten in the background as a snapshot (Redis's BGREWRITEAOF): new appends go to
``PATH.aof.next`` while ``PATH`` is written, then ``PATH.aof.next`` replaces ``PATH.aof``.

Layout (network byte order)::

    b"SMAOF" version:u8
    record*: length:u32 crc32:u32 body         (length and CRC-32 of the body)
    body:    op:u8 wall_time:f64 then
             SET     snapshot.encode_record(app, key, data, timeout, seconds_left)
             REMOVE  snapshot.encode_names(app, key)
             PURGE   snapshot.encode_names(app, "")
             BIND    snapshot.encode_names(app, key) snapshot.encode_binding(binding)
             UNBIND  snapshot.encode_names(app, key)

BIND and UNBIND (the index of sessions by user) come with protocol version 2; a log without
them reads as before. A BIND states the binding's whole state too (a touch logs a BIND).

Every record states a session's whole new state (never a delta), so replaying a log over a
snapshot taken after some of its records gives the same sessions: a crash between the steps of
a rewrite loses nothing, and a start replays ``PATH``, ``PATH.aof`` and ``PATH.aof.next`` in that
order. Locks are not logged (nor kept by the snapshot): a restarted server has every session
unlocked, and lock ids from before it match no lock.

A record cut off by a crash (its length runs past the end of the file, its CRC fails, or only
zeros follow) is dropped with a warning, as Redis's ``aof-load-truncated yes`` does; a bad record
followed by good ones is corruption, and the start is refused with the offset to look at.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
import threading
import time
import zlib
from typing import Any, Final

from django_statemodes.memory import Binding

from .errors import SnapshotError
from .snapshot import (
    FILE_MODE,
    BindingRecord,
    Record,
    decode_binding,
    encode_binding,
    encode_names,
    encode_record,
    read_names,
    read_record,
    sync_directory,
    write_snapshot,
)

__all__ = [
    "DEFAULT_REWRITE_SIZE",
    "FSYNC_INTERVAL",
    "AppendOnlyLog",
    "Bindings",
    "Sessions",
    "load",
    "log_path",
    "next_log_path",
    "replay",
    "restorable",
    "rewrite",
    "switch",
]

logger = logging.getLogger("django_statemodes.stateserver")

MAGIC: Final = b"SMAOF"
VERSION: Final = 1
HEADER: Final = MAGIC + bytes([VERSION])
SET, REMOVE, PURGE, BIND, UNBIND = 1, 2, 3, 4, 5
#: Seconds between fsyncs (Redis's ``appendfsync everysec``): what a power loss may lose.
FSYNC_INTERVAL: Final = 1.0
#: ``--appendonly-rewrite-size``'s default (Redis's ``auto-aof-rewrite-min-size``): the log is
#: rewritten once it is this large and at least as large as the snapshot.
DEFAULT_REWRITE_SIZE: Final = 64 * 1024 * 1024

_FRAME = struct.Struct("!II")
_OP = struct.Struct("!Bd")

#: What a start rebuilds before restoring: ``{application: {key: (data, timeout, seconds_left,
#: wall_time)}}``; ``wall_time`` is None for what came from the snapshot.
Sessions = dict[str, dict[str, tuple[Any, int, float, float | None]]]
#: The index's bindings a start rebuilds beside them: ``{application: {key: binding}}``.
Bindings = dict[str, dict[str, Binding]]


def log_path(snapshot: str) -> str:
    """Where ``--appendonly`` keeps its log: beside the snapshot."""
    return f"{snapshot}.aof"


def next_log_path(snapshot: str) -> str:
    """The log that takes appends while a rewrite writes the snapshot."""
    return f"{snapshot}.aof.next"


class AppendOnlyLog:
    """One open log file: appended on the event loop's thread, fsynced from a worker thread.

    Creating one truncates ``path`` and writes the header. Appends are plain ``write(2)`` calls
    (the page cache: a killed process loses none of them); ``sync`` is the once-per-second
    ``fdatasync`` and never runs on the event loop.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, FILE_MODE)
        try:
            os.fchmod(self._fd, FILE_MODE)  # a file left from before keeps its mode through O_TRUNC
            _write_all(self._fd, HEADER)
        except BaseException:
            os.close(self._fd)
            raise
        #: Bytes in the file: the header and every complete record.
        self.size = len(HEADER)
        self._synced = self.size
        # Held by sync() and close() only, never by an append: the fd is not closed under an
        # fsync in flight.
        self._mutex = threading.Lock()

    def set(self, app: str, key: str, data: Any, timeout: int) -> None:
        # A write slides the session's expiry to its full timeout (ASP.NET's sliding timeout).
        self._append(_OP.pack(SET, time.time()) + encode_record(app, key, data, timeout, timeout))

    def remove(self, app: str, key: str) -> None:
        self._append(_OP.pack(REMOVE, time.time()) + encode_names(app, key))

    def purge(self, app: str) -> None:
        self._append(_OP.pack(PURGE, time.time()) + encode_names(app, ""))

    def bind(self, app: str, key: str, binding: Binding) -> None:
        body = encode_names(app, key) + encode_binding(binding)
        self._append(_OP.pack(BIND, time.time()) + body)

    def unbind(self, app: str, key: str) -> None:
        self._append(_OP.pack(UNBIND, time.time()) + encode_names(app, key))

    def _append(self, body: bytes) -> None:
        """Append one record, or raise OSError leaving the file as it was (no torn record)."""
        frame = _FRAME.pack(len(body), zlib.crc32(body)) + body
        try:
            _write_all(self._fd, frame)
        except OSError:
            # A full disk may take part of the record: cut it off, so that a later append does
            # not follow a torn record (which a start would take for corruption).
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            raise
        self.size += len(frame)

    def sync(self) -> None:
        """fdatasync what was appended since the last call (Redis's ``appendfsync everysec``)."""
        with self._mutex:
            target = self.size  # appended before this point is in the file: the sync covers it
            if target == self._synced or self._fd < 0:
                return
            os.fdatasync(self._fd)
            self._synced = target

    def close(self) -> None:
        """Sync and close; later calls do nothing."""
        with self._mutex:
            if self._fd < 0:
                return
            fd, self._fd = self._fd, -1
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def replay(sessions: Sessions, path: str, bindings: Bindings | None = None) -> int:
    """Apply the log at ``path`` (if it exists) to ``sessions`` (and ``bindings``).

    Returns the records applied.

    A cut-off last record is dropped with a warning; corruption raises SnapshotError.
    """
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return 0
    with stream:
        size = os.fstat(stream.fileno()).st_size
        if size == 0:
            return 0
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return _replay(sessions, {} if bindings is None else bindings, path, view, size)


def _replay(sessions: Sessions, bindings: Bindings, path: str, view: mmap.mmap, size: int) -> int:
    header = view[: len(HEADER)]
    if header != HEADER:
        if size < len(HEADER) and HEADER.startswith(header):
            _dropped(path, 0, size)  # killed while creating the file
            return 0
        raise SnapshotError(f"{path} is not a state server append-only log (bad magic bytes)")
    offset, applied = len(HEADER), 0
    while offset < size:
        end = offset + _FRAME.size
        length, checksum = _FRAME.unpack(view[offset:end]) if end <= size else (0, 0)
        record_end = end + length
        if end > size or record_end > size:
            _dropped(path, offset, size - offset)  # runs past the end: the write was cut off
            return applied
        body = view[end:record_end]
        if not length or zlib.crc32(body) != checksum:
            if record_end == size or not view[offset:].strip(b"\0"):
                _dropped(path, offset, size - offset)  # the last record, or a zeroed tail
                return applied
            raise SnapshotError(
                f"the append-only log {path} is corrupt at byte {offset} (a bad record followed "
                "by others): move it aside to start from the snapshot alone, or restore a backup"
            )
        _apply(sessions, bindings, path, offset, body)
        applied += 1
        offset = record_end
    return applied


def _dropped(path: str, offset: int, size: int) -> None:
    logger.warning(
        "The append-only log %s ends with an incomplete record at byte %d (a write cut off by a "
        "crash): truncated there, %d byte(s) dropped; every record before it was replayed",
        path,
        offset,
        size,
    )


def _apply(sessions: Sessions, bindings: Bindings, path: str, offset: int, body: bytes) -> None:
    position = _OP.size

    def read(size: int) -> bytes:
        nonlocal position
        chunk = body[position : position + size]
        if len(chunk) != size:
            raise SnapshotError(f"the append-only log {path} has a short record at byte {offset}")
        position += size
        return chunk

    op, wall = _OP.unpack(body[: _OP.size])
    where = f"the append-only log {path}"
    if op == SET:
        app, key, data, timeout, seconds_left = read_record(read, where)
        sessions.setdefault(app, {})[key] = (data, timeout, seconds_left, wall)
    elif op == REMOVE:
        app, key = read_names(read, where)
        sessions.get(app, {}).pop(key, None)
        bindings.get(app, {}).pop(key, None)
    elif op == PURGE:
        app, _ = read_names(read, where)
        sessions.pop(app, None)
        bindings.pop(app, None)
    elif op == BIND:
        app, key = read_names(read, where)
        bindings.setdefault(app, {})[key] = decode_binding(read, where)
    elif op == UNBIND:
        app, key = read_names(read, where)
        bindings.get(app, {}).pop(key, None)
    else:
        raise SnapshotError(f"{where} has an unknown record type {op} at byte {offset}")
    if position != len(body):
        raise SnapshotError(f"{where} has a record with extra bytes at byte {offset}")


def restorable(sessions: Sessions) -> dict[str, list[tuple[str, Any, int, float]]]:
    """``sessions`` as ``ServerState.restore`` takes them, with each one's lifetime left.

    As with a snapshot, the time the server was down does not count: a logged session keeps
    what it had left at the log's last record (the last moment the server is known to have run).
    """
    walls = [wall for items in sessions.values() for *_, wall in items.values() if wall]
    last = max(walls, default=0.0)
    return {
        app: [
            (key, data, timeout, left if wall is None else left - max(0.0, last - wall))
            for key, (data, timeout, left, wall) in items.items()
        ]
        for app, items in sessions.items()
    }


def load(
    snapshot: dict[str, list[tuple[str, Any, int, float]]],
    path: str,
    bindings: Bindings | None = None,
) -> Sessions:
    """The snapshot's sessions with ``PATH.aof`` and ``PATH.aof.next`` replayed over them.

    ``bindings`` (the snapshot's, by application and key) are updated in place.
    """
    sessions: Sessions = {
        app: {key: (data, timeout, left, None) for key, data, timeout, left in items}
        for app, items in snapshot.items()
    }
    for log in (log_path(path), next_log_path(path)):
        applied = replay(sessions, log, bindings)
        if applied:
            logger.info("Replayed %d write(s) from %s", applied, log)
    return sessions


def switch(snapshot: str, current: AppendOnlyLog) -> None:
    """Make ``current`` (appending to ``PATH.aof.next``) the log: rename it, sync the directory."""
    target = log_path(snapshot)
    os.replace(current.path, target)  # the open descriptor keeps appending to the same file
    current.path = target
    sync_directory(snapshot)


def rewrite(
    snapshot: str,
    records: list[Record],
    old: AppendOnlyLog | None,
    current: AppendOnlyLog,
    bindings: list[BindingRecord] | None = None,
) -> int:
    """A rewrite's file work, in a worker thread; return the sessions written.

    ``records`` were taken on the event loop's thread at the moment appends moved from ``old``
    to ``current``: the snapshot holds everything ``old`` did. If the snapshot cannot be written,
    ``current`` stays at ``PATH.aof.next`` and the next rewrite tries again with it (replaying
    ``PATH.aof`` then ``PATH.aof.next`` over the old snapshot still gives every write).
    """
    if old is not None:
        old.close()
    count = write_snapshot(snapshot, records, bindings or ())
    switch(snapshot, current)
    return count
