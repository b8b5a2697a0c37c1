"""The state server under hostile traffic: bounded memory per connection, bounded connections.

Each test runs a real server process and measures its resident memory (``VmRSS`` in
``/proc/<pid>/status``) and its log file, as issue 13 asks: backpressure (Redis's
``client-output-buffer-limit``), a tiny pre-handshake frame and a handshake timeout (PostgreSQL's
``authentication_timeout``), ``--max-connections`` (Redis's ``maxclients``) and ``--idle-timeout``
(Redis's ``timeout``).
"""

from __future__ import annotations

import asyncio
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from django_statemodes.stateserver import protocol as p
from django_statemodes.stateserver.addresses import Address
from django_statemodes.stateserver.client import AsyncStateServerClient, StateServerClient
from django_statemodes.stateserver.server import NOFILE_MARGIN
from tests.fixtures_stateserver import ROOT, StateServerProcess, client_for, wait_for_port

pytestmark = [pytest.mark.stateserver]

MiB = 1024 * 1024
# The acceptance bound of issue 13 on the server's RSS growth under each attack.
RSS_GROWTH_LIMIT = 64 * MiB


def rss(pid: int) -> int:
    """The resident set size of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def handshaken(port: int) -> tuple[socket.socket, p.Connection]:
    """A raw socket past the handshake, to send what no client would send."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = p.Connection(p.CLIENT)
    while (event := conn.next_event()) is p.NEED_DATA:
        conn.receive_data(sock.recv(4096))
    assert isinstance(event, p.Welcome)
    sock.sendall(conn.send(p.Hello(client_nonce=b"c" * 16)))
    while (event := conn.next_event()) is p.NEED_DATA:
        conn.receive_data(sock.recv(4096))
    assert isinstance(event, p.Ready)
    return sock, conn


def read_to_eof(socks: list[socket.socket], deadline: float) -> list[socket.socket]:
    """Read every socket until the server closes it; return those still open at ``deadline``."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, sock)
    left = len(socks)
    while left and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            sock = key.data
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:  # a reset is a close too
                data = b""
            if not data:
                selector.unregister(sock)
                left -= 1
    still_open: list[socket.socket] = [key.data for key in selector.get_map().values()]
    selector.close()
    return still_open


def peak_rss(pid: int, seconds: float) -> int:
    """The highest RSS seen while sampling for ``seconds`` (the attack's effect takes a moment)."""
    peak = rss(pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
        peak = max(peak, rss(pid))
    return peak


def test_pipelined_gets_never_read_keep_the_server_within_its_output_bound() -> None:
    # 1,000 GETs of a 1 MiB session in 11 KB, replies never read: without backpressure the server
    # built all 1,000 replies (1 GiB). Redis bounds this with client-output-buffer-limit; here the
    # reading pauses while a connection's unsent output is over the high-water mark.
    with StateServerProcess() as server:
        legit = client_for(server)
        legit.set_and_release("big", b"x" * MiB, lock_id=None, timeout=600, new_item=True)
        assert legit.ping(b"warm") == b"warm"
        before = rss(server.pid)

        attacker, conn = handshaken(server.port)
        attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        attacker.sendall(b"".join(conn.send(p.Get(i + 1, "big")) for i in range(1000)))
        peak = peak_rss(server.pid, 3.0)
        # Another client is answered meanwhile, and the server holds the same bound afterwards.
        assert legit.ping(b"still here") == b"still here"
        assert legit.get("big") is not None
        peak = max(peak, peak_rss(server.pid, 1.0))
        print(f"RSS before {before / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB")
        assert peak - before <= RSS_GROWTH_LIMIT
        attacker.close()
        assert legit.ping(b"after") == b"after"


def test_connections_that_never_finish_a_handshake_are_small_and_dropped() -> None:
    # Before HELLO only a frame of HELLO's size is accepted (an 8 MiB frame used to be buffered
    # by each unauthenticated connection), and --handshake-timeout drops the silent ones
    # (PostgreSQL's authentication_timeout).
    with StateServerProcess("--handshake-timeout", "1") as server:
        legit = client_for(server)
        assert legit.ping(b"warm") == b"warm"
        before = rss(server.pid)
        log_before = server.log.stat().st_size
        socks: list[socket.socket] = []
        # Half announce an almost 8 MiB frame and send 256 KiB of it; half send nothing.
        partial = (8 * MiB - 64).to_bytes(4, "big") + b"\x02" + bytes(4) + b"y" * (256 * 1024)
        for index in range(1000):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            if index % 2 == 0:
                sock.setblocking(False)
                try:
                    sock.send(partial)
                except OSError:  # already refused and closed: what the server should do
                    pass
            socks.append(sock)
            if index % 100 == 99:
                assert legit.ping(b"%d" % index) == b"%d" % index
        peak = peak_rss(server.pid, 0.5)
        assert legit.ping(b"during") == b"during"
        print(f"RSS before {before / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB")
        assert peak - before <= RSS_GROWTH_LIMIT
        # Every one is closed by the server (EOF), well before the 30 s frame timeout: the
        # silent ones can only have been dropped by the handshake timeout.
        still_open = read_to_eof(socks, time.monotonic() + 20)
        assert len(still_open) == 0
        for sock in socks:
            sock.close()
        assert legit.ping(b"after") == b"after"
        assert legit.stats()["connections"] == 1
        # A line per refused connection would let anyone write the log at the flood's rate.
        growth = server.log.stat().st_size - log_before
        print(f"log grew by {growth} bytes")
        assert growth <= 4096


class _LimitedServer(StateServerProcess):
    """The server started under ``ulimit -n`` = ``nofile`` (systemd's default is 1024)."""

    def __init__(self, *args: str, nofile: int, env: dict[str, str] | None = None) -> None:
        super().__init__(*args, env=env)
        self.nofile = nofile

    def start(self) -> _LimitedServer:
        env = dict(os.environ, **(self.env or {}))
        extra = (self.env or {}).get("PYTHONPATH")
        env["PYTHONPATH"] = f"{extra}{os.pathsep}{ROOT}" if extra else str(ROOT)
        command = [sys.executable, "-m", "django_statemodes.stateserver", "--port", str(self.port)]
        nofile = self.nofile

        def limit() -> None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                command + self.args,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=limit,
            )
        wait_for_port(self.port)
        return self


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_connection_flood_under_ulimit_1024_leaves_the_server_serving_and_quiet(
    loop: str,
) -> None:
    # 2,000 connections held open against a 1,024-descriptor process: past --max-connections
    # (default: the limit minus a margin) they are closed at once (Redis's maxclients), so the
    # accept path never runs out of descriptors and never logs in a loop.
    pytest.importorskip(loop)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    # The flood never sends a handshake, and on a busy machine (or with a small accept queue)
    # its connections arrive in waves on the kernel's SYN retries: with the default 5 s
    # --handshake-timeout each wave was closed before the next arrived, so the server never held
    # --max-connections at once and refused nothing (seen once in CI). The flood is held here.
    with _LimitedServer("--loop", loop, "--handshake-timeout", "600", nofile=1024) as server:
        legit = client_for(server)
        assert legit.ping(b"warm") == b"warm"
        log_before = server.log.stat().st_size
        flood: list[socket.socket] = []
        try:
            for index in range(2000):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", server.port))
                flood.append(sock)
                if index % 250 == 249:
                    # A client connected before the flood is answered throughout.
                    assert legit.ping(b"%d" % index) == b"%d" % index
                if index % 100 == 99:
                    # In hundreds, each taken in (held or refused) before the next: a faster
                    # flood overflows the kernel's accept queue, and what then reaches the server
                    # depends on SYN-ACK retries and the machine's speed (in CI once, 815 of
                    # 2,000 within 110 s: never --max-connections, so nothing was refused).
                    arrived(legit, index + 1, within=30)
            # Hold them open while the server works through its backlog. Connections beyond the
            # listen backlog complete only on the kernel's SYN retries (1 s, 3 s, 7 s...), so the
            # wait is for the event (a refusal counted), bounded far above its usual second and
            # within the client's own SYN retries (about 127 s on Linux).
            deadline = time.monotonic() + 110
            stats = legit.stats()
            while stats["refused_connections"] == 0 and time.monotonic() < deadline:
                time.sleep(0.25)
                stats = legit.stats()
            assert legit.ping(b"held") == b"held"
        finally:
            for sock in flood:
                sock.close()
        # A new client once the flood's connections are closed: it may find the server still
        # full while it reaps them, so it retries once (documented in docs/stateserver.md).
        time.sleep(0.5)
        newcomer = client_for(server)
        try:
            assert newcomer.ping(b"new") == b"new"
        except Exception:
            time.sleep(1)
            assert newcomer.ping(b"new") == b"new"
        log = server.log.read_text()[log_before:]
        print(f"log grew by {len(log)} bytes; connections {stats['connections']}")
        # A few lines, never a loop. With asyncio's loop a burst may still hit EMFILE once (it
        # accepts up to 100 connections per wake-up before any protocol sees them): that is
        # logged once per interval, and asyncio accepts again a second later.
        assert len(log) <= 4096, log[-2000:]
        assert log.count("Too many open files") <= 1
        # The server never held more than --max-connections, and said how many it refused.
        assert stats["connections"] <= 1024 - NOFILE_MARGIN
        assert stats["refused_connections"] > 0


def arrived(client: StateServerClient, count: int, within: float) -> None:
    """Wait until ``count`` connections besides ``client``'s reached the server (held or
    refused), or ``within`` seconds passed; the test's assertions then say what happened."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        stats = client.stats()
        if stats["connections"] - 1 + stats["refused_connections"] >= count:
            return
        time.sleep(0.05)


def test_max_connections_refuses_the_excess_at_once_and_counts_it() -> None:
    with StateServerProcess("--max-connections", "3") as server:
        legit = client_for(server)
        assert legit.ping() == b""
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(2)]
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        assert extra.recv(4096) == b""  # closed at once, no WELCOME
        extra.close()
        stats = legit.stats()
        assert stats["connections"] == 3
        assert stats["refused_connections"] == 1
        for sock in held:
            sock.close()


def test_idle_authenticated_connections_are_closed_and_clients_reconnect() -> None:
    opened: list[socket.socket] = []

    def connect(address: Any, timeout: float) -> socket.socket:
        sock = socket.create_connection(address, timeout)
        opened.append(sock)
        return sock

    async def async_pings(server: StateServerProcess) -> list[bytes]:
        client = AsyncStateServerClient(Address("127.0.0.1", server.port), timeout=5)
        answers = [await client.ping(b"a1")]
        raw, _ = handshaken(server.port)  # opened after the client's: closed after it too
        assert read_to_eof([raw], time.monotonic() + 20) == []
        raw.close()
        answers.append(await client.ping(b"a2"))
        return answers

    with StateServerProcess("--idle-timeout", "1") as server:
        client = client_for(server, socket_factory=connect)
        assert client.ping(b"one") == b"one"
        raw, _ = handshaken(server.port)
        # The server closes an idle authenticated connection without a word, as Redis's timeout.
        assert read_to_eof([raw], time.monotonic() + 20) == []
        raw.close()
        # The client's kept connection was closed too; its next call reconnects transparently.
        assert client.ping(b"two") == b"two"
        assert len(opened) == 2
        # The asyncio client as well.
        assert asyncio.run(async_pings(server)) == [b"a1", b"a2"]
