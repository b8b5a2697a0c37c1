"""A minimal key-value server: the floor any Python state server is measured against.

It runs on the event loop the state server picks (``--loop auto``: uvloop when installed), with
an ``asyncio.Protocol`` as the state server has, so the floor differs from the state server by
the work of a state server, not by its loop. Protocol, one request per line:
``G key`` answers ``<length>`` and the value (``-1`` if missing); ``S key length`` followed by
the value answers ``OK``; ``D key`` deletes it and answers ``OK``.
Run: ``python -m benchmarks.kvserver PORT [auto|asyncio|uvloop]`` (binds 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import sys
from typing import cast

from django_statemodes.stateserver.server import loop_factory

_data: dict[bytes, bytes] = {}


class _KV(asyncio.Protocol):
    """One connection: a protocol object, as the state server has (no streams in between)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while (end := buffer.find(b"\n")) >= 0:
            parts = bytes(buffer[:end]).split()
            if parts[0] == b"G":
                del buffer[: end + 1]
                value = _data.get(parts[1])
                if value is None:
                    self.transport.write(b"-1\n")
                else:
                    self.transport.writelines((b"%d\n" % len(value), value))
            elif parts[0] == b"D":
                del buffer[: end + 1]
                _data.pop(parts[1], None)
                self.transport.write(b"OK\n")
            else:
                size = int(parts[2])
                if len(buffer) < end + 1 + size:
                    return
                _data[parts[1]] = bytes(buffer[end + 1 : end + 1 + size])
                del buffer[: end + 1 + size]
                self.transport.write(b"OK\n")


def serve(port: int, loop_name: str = "auto") -> None:
    """Serve on 127.0.0.1:``port`` forever, on the loop the state server's ``--loop`` picks."""
    factory = loop_factory(loop_name)
    loop = factory() if factory is not None else asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_KV, "127.0.0.1", port))
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


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

    def delete(self, key: bytes) -> None:
        self.sock.sendall(b"D %s\n" % key)
        self.file.readline()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@functools.cache
def client() -> KVClient:
    """This process's client of the server the harness started (opened on first use, so after
    a gunicorn worker's fork)."""
    from benchmarks.engines import KV_PORT_ENV

    return KVClient(int(os.environ[KV_PORT_ENV]))


if __name__ == "__main__":
    try:
        serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "auto")
    except KeyboardInterrupt:
        pass
