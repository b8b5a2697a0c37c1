"""Round trips on the wire: a counting TCP proxy in front of each server a benchmark talks to.

A round trip is a turn of the conversation: the client sends (in one write or several) and
then waits for the server's answer. The proxy counts a turn each time bytes from the client
follow bytes from the server (or open the connection), whatever the protocol: pipelined
commands sent together are one turn. It also counts the bytes each way. The proxy adds latency,
so round trips are counted in a pass of their own, never while a benchmark is timed.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass


@dataclass
class Counts:
    turns: int = 0
    sent: int = 0  # client to server
    received: int = 0  # server to client


class CountingProxy:
    """Listen on a free loopback port; forward every connection to ``127.0.0.1:upstream``."""

    def __init__(self, upstream: int, counts: Counts, lock: threading.Lock) -> None:
        self.upstream = upstream
        self.counts = counts
        self.lock = lock
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port: int = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name=f"proxy-{upstream}").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The side that spoke last on this connection: a client write after the server's
            # answer (or first of all) starts a turn.
            last = ["server"]
            threading.Thread(
                target=self._pump, args=(client, server, last, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, last, False), daemon=True
            ).start()

    def _pump(
        self, source: socket.socket, target: socket.socket, last: list[str], up: bool
    ) -> None:
        try:
            while data := source.recv(1 << 20):
                with self.lock:
                    if up:
                        if last[0] == "server":
                            self.counts.turns += 1
                        last[0] = "client"
                        self.counts.sent += len(data)
                    else:
                        last[0] = "server"
                        self.counts.received += len(data)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


class Wire:
    """Every proxy of one counting pass, sharing one set of counts."""

    def __init__(self) -> None:
        self.counts = Counts()
        self.lock = threading.Lock()
        self.proxies: list[CountingProxy] = []

    def proxy(self, upstream: int) -> int:
        """Start a proxy to ``upstream``; return the port to connect to instead."""
        proxy = CountingProxy(upstream, self.counts, self.lock)
        self.proxies.append(proxy)
        return proxy.port

    def take(self) -> Counts:
        """Return the counts so far and start again from zero."""
        with self.lock:
            counts, self.counts.turns, self.counts.sent, self.counts.received = (
                Counts(self.counts.turns, self.counts.sent, self.counts.received),
                0,
                0,
                0,
            )
        return counts

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.close()
