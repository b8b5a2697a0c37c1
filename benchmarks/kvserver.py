"""A minimal asyncio key-value server: the floor any Python state server is measured against.

DESIGN.md §5 puts GET+SET on such a server at ~25 µs. Protocol, one request per line:
``G key`` answers ``<length>`` and the value (``-1`` if missing); ``S key length`` followed by
the value answers ``OK``. Run: ``python -m benchmarks.kvserver PORT`` (binds 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import socket
import sys

_data: dict[bytes, bytes] = {}


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            parts = line.split()
            if parts[0] == b"G":
                value = _data.get(parts[1])
                writer.write(b"-1\n" if value is None else b"%d\n%s" % (len(value), value))
            else:
                _data[parts[1]] = await reader.readexactly(int(parts[2]))
                writer.write(b"OK\n")
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _main(port: int) -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


class KVClient:
    """A blocking client for the floor server."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def get(self, key: bytes) -> bytes | None:
        self.sock.sendall(b"G %s\n" % key)
        length = int(self.file.readline())
        return None if length < 0 else self.file.read(length)

    def set(self, key: bytes, value: bytes) -> None:
        self.sock.sendall(b"S %s %d\n%s" % (key, len(value), value))
        self.file.readline()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


if __name__ == "__main__":
    try:
        asyncio.run(_main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
