"""The blocking client keeps one persistent connection per thread, seen from both ends."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from django_statemodes.stateserver.addresses import Address
from django_statemodes.stateserver.client import StateServerClient
from tests.fixtures_stateserver import StateServerProcess

pytestmark = [pytest.mark.stateserver]


def test_each_thread_has_its_own_connection_and_reuses_it_across_calls() -> None:
    opened: list[tuple[str, int]] = []  # (thread name, local port) of every connection made

    def connect(address: Any, timeout: float) -> socket.socket:
        # The client's own factory, socket.create_connection, plus a note of who opened what.
        sock = socket.create_connection(address, timeout)
        opened.append((threading.current_thread().name, sock.getsockname()[1]))
        return sock

    with StateServerProcess() as server:
        address = Address("127.0.0.1", server.port)
        observer = StateServerClient(address, timeout=5)  # its own connection, counted below
        client = StateServerClient(address, timeout=5, socket_factory=connect)
        assert observer.stats()["connections"] == 1

        for index in range(5):
            assert client.ping(b"%d" % index) == b"%d" % index
        assert [name for name, _ in opened] == ["MainThread"]
        assert observer.stats()["connections"] == 2

        # Two threads, kept alive until counted: a thread's connection closes when it ends.
        counted, finish = threading.Barrier(3), threading.Event()
        failures: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(5):
                    assert client.ping(b"x") == b"x"
            except BaseException as exc:
                failures.append(exc)
            counted.wait(10)
            finish.wait(10)

        threads = [threading.Thread(target=work, name=f"worker-{i}") for i in range(2)]
        for thread in threads:
            thread.start()
        try:
            counted.wait(10)
            assert failures == []
            assert observer.stats()["connections"] == 4  # observer, main thread, two workers
        finally:
            finish.set()
            for thread in threads:
                thread.join(10)

        # One connection per thread however many calls it made, each from its own local port.
        assert sorted(name for name, _ in opened) == ["MainThread", "worker-0", "worker-1"]
        assert len({port for _, port in opened}) == 3
        # The main thread's connection is still the one it opened first.
        assert client.ping(b"again") == b"again"
        assert len(opened) == 3
