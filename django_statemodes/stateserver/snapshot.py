"""The state server's snapshot file: length-prefixed binary records, never pickle.

ASP.NET's state service keeps sessions in memory only and loses them all on a restart; with
``--snapshot PATH`` ours writes them to disk (periodically and on shutdown) and loads them at
start. Layout (network byte order)::

    b"SMSNAP" version:u8
    record*: app_len:u16 app:utf8 key_len:u8 key:ascii timeout:u32 seconds_left:f64
             data_len:u32 data            (data_len 0xFFFFFFFF means no data)
    app_len:u16 = 0   count:u64           (end marker: a cut-off file is detected)
    binding*: app_len:u16 app key_len:u8 key binding     (version 2: the index by user)
    app_len:u16 = 0   count:u64

    binding: uid_len:u8 uid:utf8 created:f64 last_seen:f64 flags:u8 (1: ip, 2: user agent)
             ip_len:u8 ip:utf8 ua_len:u16 ua:utf8

A version 1 file (no bindings section) is still read.

Locks are not kept: a restarted server starts with every session unlocked. The append-only log
(``appendonly.py``) frames the same records (``encode_record``, ``read_record``): one encoding.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, Final

from django_statemodes.memory import Binding

from .errors import SnapshotError

__all__ = [
    "BindingRecord",
    "SnapshotError",
    "decode_binding",
    "encode_binding",
    "read_snapshot_file",
    "check_snapshot_path",
    "encode_names",
    "encode_record",
    "read_names",
    "read_record",
    "read_snapshot",
    "sync_directory",
    "write_snapshot",
]

MAGIC: Final = b"SMSNAP"
VERSION: Final = 2
NO_DATA: Final = (1 << 32) - 1

_U16 = struct.Struct("!H")
_TAIL = struct.Struct("!IdI")
_COUNT = struct.Struct("!Q")
_BINDING = struct.Struct("!ddB")

#: One record: (application, key, data, timeout, seconds_left), as MemoryStore.snapshot() plus app.
Record = tuple[str, str, Any, int, float]
#: One binding of the index by user: (application, key, binding).
BindingRecord = tuple[str, str, Binding]


def encode_binding(binding: Binding) -> bytes:
    """A binding's fields as the snapshot and the append-only log store them."""
    user_id = binding.user_id.encode("utf-8")
    ip = (binding.ip or "").encode("utf-8")
    agent = (binding.user_agent or "").encode("utf-8")
    flags = (binding.ip is not None) | (binding.user_agent is not None) << 1
    return (
        bytes([len(user_id)])
        + user_id
        + _BINDING.pack(binding.created, binding.last_seen, flags)
        + bytes([len(ip)])
        + ip
        + _U16.pack(len(agent))
        + agent
    )


def decode_binding(read: Callable[[int], bytes], path: str) -> Binding:
    """Read what ``encode_binding`` wrote."""
    try:
        user_id = read(read(1)[0]).decode("utf-8")
        created, last_seen, flags = _BINDING.unpack(read(_BINDING.size))
        ip = read(read(1)[0]).decode("utf-8")
        agent = read(_U16.unpack(read(_U16.size))[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise SnapshotError(f"{path} is corrupt (bad binding)") from None
    return Binding(
        user_id, created, last_seen, ip if flags & 1 else None, agent if flags & 2 else None
    )


def encode_names(app: str, key: str) -> bytes:
    """``app_len:u16 app key_len:u8 key``: how a record names its session."""
    app_bytes, key_bytes = app.encode("utf-8"), key.encode("ascii")
    return _U16.pack(len(app_bytes)) + app_bytes + bytes([len(key_bytes)]) + key_bytes


def encode_record(app: str, key: str, data: Any, timeout: int, seconds_left: float) -> bytes:
    """One session as the snapshot (and the append-only log) stores it."""
    size = NO_DATA if data is None else len(data)
    head = encode_names(app, key) + _TAIL.pack(timeout, seconds_left, size)
    return head if data is None else head + bytes(data)


#: Reads exactly ``size`` bytes or raises SnapshotError (a cut-off file).
Reader = Callable[[int], bytes]


def read_names(read: Reader, path: str, app_length: int | None = None) -> tuple[str, str]:
    """Read what ``encode_names`` wrote (its ``app_len`` already read if given)."""
    if app_length is None:
        (app_length,) = _U16.unpack(read(_U16.size))
    try:
        return read(app_length).decode("utf-8"), read(read(1)[0]).decode("ascii")
    except UnicodeDecodeError:
        raise SnapshotError(f"{path} is corrupt (bad name)") from None


def read_record(read: Reader, path: str, app_length: int | None = None) -> Record:
    """Read what ``encode_record`` wrote (its ``app_len`` already read if given)."""
    app, key = read_names(read, path, app_length)
    timeout, seconds_left, data_length = _TAIL.unpack(read(_TAIL.size))
    data = None if data_length == NO_DATA else read(data_length)
    return app, key, data, timeout, seconds_left


def _read_file(stream: BinaryIO, path: str, bindings: list[BindingRecord]) -> Iterator[Record]:
    """Yield the records, then fill ``bindings`` (version 2)."""

    def read(size: int) -> bytes:
        chunk = stream.read(size)
        if len(chunk) != size:
            raise SnapshotError(f"snapshot {path} is cut off (truncated file)")
        return chunk

    if read(len(MAGIC)) != MAGIC:
        raise SnapshotError(f"{path} is not a state server snapshot (bad magic bytes)")
    version = read(1)[0]
    if version not in (1, VERSION):
        raise SnapshotError(
            f"snapshot {path} has version {version}; this server reads 1 to {VERSION}"
        )
    count = 0
    while True:
        (app_length,) = _U16.unpack(read(_U16.size))
        if app_length == 0:
            _end(read, path, count, "sessions")
            break
        record = read_record(read, f"snapshot {path}", app_length)
        count += 1
        yield record
    if version >= 2:
        count = 0
        while True:
            (app_length,) = _U16.unpack(read(_U16.size))
            if app_length == 0:
                _end(read, path, count, "bindings")
                break
            app, key = read_names(read, f"snapshot {path}", app_length)
            bindings.append((app, key, decode_binding(read, f"snapshot {path}")))
            count += 1
    if stream.read(1):
        raise SnapshotError(f"snapshot {path} has bytes after its end marker")


def _end(read: Reader, path: str, count: int, what: str) -> None:
    (expected,) = _COUNT.unpack(read(_COUNT.size))
    if expected != count:
        raise SnapshotError(f"snapshot {path} lists {expected} {what}, holds {count}")


def read_snapshot_file(
    path: str,
) -> tuple[dict[str, list[tuple[str, Any, int, float]]], list[BindingRecord]]:
    """Return the sessions as ``read_snapshot`` does, and the index's bindings."""
    result: dict[str, list[tuple[str, Any, int, float]]] = {}
    bindings: list[BindingRecord] = []
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below, and the error kept precise
    except FileNotFoundError:
        return result, bindings
    with stream:
        for app, key, data, timeout, seconds_left in _read_file(stream, path, bindings):
            result.setdefault(app, []).append((key, data, timeout, seconds_left))
    return result, bindings


def read_snapshot(path: str) -> dict[str, list[tuple[str, Any, int, float]]]:
    """Return ``{application: MemoryStore.snapshot()-style items}``; {} if there is no file."""
    return read_snapshot_file(path)[0]


#: Snapshots hold every session's key and data: readable by the server's user only (Redis
#: writes its dump the same way), whatever the umask.
FILE_MODE: Final = 0o600


def check_snapshot_path(path: str) -> None:
    """Raise SnapshotError unless a snapshot can be written at ``path`` (checked at start).

    Redis checks its ``dir`` at start; without this a server with an unwritable path would
    run, fail every interval, and lose everything at shutdown. The check writes and removes
    ``path.tmp``, as a real write would: a permission test alone is wrong for root.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise SnapshotError(f"the snapshot path {path} is a directory; name a file in it")
    tmp = f"{path}.tmp"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE))
        os.unlink(tmp)
    except OSError as exc:
        raise SnapshotError(
            f"the snapshot directory {directory} cannot be written ({exc.strerror}): create it, "
            "writable by the server's user, or choose another --snapshot PATH"
        ) from None


def write_snapshot(
    path: str, records: Iterable[Record], bindings: Iterable[BindingRecord] = ()
) -> int:
    """Write records atomically (a temporary file, fsync, then rename); return how many.

    A failed write (a full disk, a rename refused) removes the temporary file, as Redis removes
    its ``temp-*.rdb``: a partial snapshot never lingers beside the good one.
    """
    tmp = f"{path}.tmp"
    try:
        count = _write_tmp(tmp, records, bindings)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sync_directory(path)
    return count


def sync_directory(path: str) -> None:
    """fsync the directory holding ``path``: a rename is durable only once it is synced."""
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _write_tmp(tmp: str, records: Iterable[Record], bindings: Iterable[BindingRecord]) -> int:
    count = 0
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(descriptor, FILE_MODE)  # a leftover .tmp keeps its old mode through O_TRUNC
    with open(descriptor, "wb") as stream:
        write = stream.write
        write(MAGIC + bytes([VERSION]))
        for app, key, data, timeout, seconds_left in records:
            write(encode_names(app, key))
            write(_TAIL.pack(timeout, seconds_left, NO_DATA if data is None else len(data)))
            if data is not None:
                write(data)  # not joined to the head: a 4 MiB payload is not copied
            count += 1
        write(_U16.pack(0) + _COUNT.pack(count))
        bound = 0
        for app, key, binding in bindings:
            write(encode_names(app, key) + encode_binding(binding))
            bound += 1
        write(_U16.pack(0) + _COUNT.pack(bound))
        stream.flush()
        os.fsync(stream.fileno())
    return count
