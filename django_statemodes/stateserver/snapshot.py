"""The state server's snapshot file: length-prefixed binary records, never pickle.

ASP.NET's state service keeps sessions in memory only and loses them all on a restart; with
``--snapshot PATH`` ours writes them to disk (periodically and on shutdown) and loads them at
start. Layout (network byte order)::

    b"SMSNAP" version:u8
    record*: app_len:u16 app:utf8 key_len:u8 key:ascii timeout:u32 seconds_left:f64
             data_len:u32 data            (data_len 0xFFFFFFFF means no data)
    app_len:u16 = 0   count:u64           (end marker: a cut-off file is detected)

Locks are not kept: a restarted server starts with every session unlocked.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, Final

from .errors import SnapshotError

__all__ = ["SnapshotError", "read_snapshot", "write_snapshot"]

MAGIC: Final = b"SMSNAP"
VERSION: Final = 1
NO_DATA: Final = (1 << 32) - 1

_U16 = struct.Struct("!H")
_TAIL = struct.Struct("!IdI")
_COUNT = struct.Struct("!Q")

#: One record: (application, key, data, timeout, seconds_left), as MemoryStore.snapshot() plus app.
Record = tuple[str, str, Any, int, float]


def _records(stream: BinaryIO, path: str) -> Iterator[Record]:
    def read(size: int) -> bytes:
        chunk = stream.read(size)
        if len(chunk) != size:
            raise SnapshotError(f"snapshot {path} is cut off (truncated file)")
        return chunk

    if read(len(MAGIC)) != MAGIC:
        raise SnapshotError(f"{path} is not a state server snapshot (bad magic bytes)")
    version = read(1)[0]
    if version != VERSION:
        raise SnapshotError(f"snapshot {path} has version {version}; this server reads {VERSION}")
    count = 0
    while True:
        (app_length,) = _U16.unpack(read(_U16.size))
        if app_length == 0:
            (expected,) = _COUNT.unpack(read(_COUNT.size))
            if expected != count:
                raise SnapshotError(f"snapshot {path} lists {expected} sessions, holds {count}")
            if stream.read(1):
                raise SnapshotError(f"snapshot {path} has bytes after its end marker")
            return
        try:
            app = read(app_length).decode("utf-8")
            key = read(read(1)[0]).decode("ascii")
        except UnicodeDecodeError:
            raise SnapshotError(f"snapshot {path} is corrupt (bad name)") from None
        timeout, seconds_left, data_length = _TAIL.unpack(read(_TAIL.size))
        data = None if data_length == NO_DATA else read(data_length)
        count += 1
        yield app, key, data, timeout, seconds_left


def read_snapshot(path: str) -> dict[str, list[tuple[str, Any, int, float]]]:
    """Return ``{application: MemoryStore.snapshot()-style items}``; {} if there is no file."""
    result: dict[str, list[tuple[str, Any, int, float]]] = {}
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below, and the error kept precise
    except FileNotFoundError:
        return result
    with stream:
        for app, key, data, timeout, seconds_left in _records(stream, path):
            result.setdefault(app, []).append((key, data, timeout, seconds_left))
    return result


def write_snapshot(path: str, records: Iterable[Record]) -> int:
    """Write records atomically (a temporary file, fsync, then rename); return how many."""
    tmp = f"{path}.tmp"
    count = 0
    with open(tmp, "wb") as stream:
        write = stream.write
        write(MAGIC + bytes([VERSION]))
        for app, key, data, timeout, seconds_left in records:
            app_bytes, key_bytes = app.encode("utf-8"), key.encode("ascii")
            write(_U16.pack(len(app_bytes)) + app_bytes + bytes([len(key_bytes)]) + key_bytes)
            size = NO_DATA if data is None else len(data)
            write(_TAIL.pack(timeout, seconds_left, size))
            if data is not None:
                write(data)
            count += 1
        write(_U16.pack(0) + _COUNT.pack(count))
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)
    # The rename itself is durable only once the directory is synced.
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return count
