"""Fill a real state server with N sessions of 1 KB and report its memory (RSS).

Target (docs/stateserver.md): 1,000,000 sessions of 1 KB within 2 GB.

    .venv/bin/python benchmarks/stateserver_memory.py --sessions 1000000

Sessions are written with pipelined SET requests (1,000 frames per write) over one connection,
keys in Django's format (32 characters); the RSS is read from /proc/<pid>/status.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from django_statemodes.stateserver import protocol as p  # noqa: E402

BATCH = 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def connect(port: int) -> tuple[socket.socket, p.Connection]:
    deadline = time.monotonic() + 20
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    conn = p.Connection(p.CLIENT)
    conn.receive_data(sock.recv(1024))
    conn.next_event()
    sock.sendall(conn.send(p.Hello(application="bench", client_nonce=os.urandom(16))))
    while (event := conn.next_event()) is p.NEED_DATA:
        conn.receive_data(sock.recv(1024))
    assert isinstance(event, p.Ready), event
    return sock, conn


def fill(sock: socket.socket, conn: p.Connection, count: int, size: int) -> None:
    payload = b"\x00" + b"x" * (size - 1)
    done = 0
    while done < count:
        batch = min(BATCH, count - done)
        frames = [
            conn.send(p.SetAndRelease(i + 1, f"{done + i:032d}", payload, None, 1200, True))
            for i in range(batch)
        ]
        sock.sendall(b"".join(frames))
        answered = 0
        while answered < batch:
            event = conn.next_event()
            if event is p.NEED_DATA:
                conn.receive_data(sock.recv(1 << 20))
                continue
            assert isinstance(event, p.Result) and event.value == 1, event
            answered += 1
        done += batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1024, help="payload bytes per session")
    options = parser.parse_args()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "django_statemodes.stateserver", "--port", str(port)]
    server = subprocess.Popen(command + ["--log-level", "WARNING"], env=env)
    try:
        sock, conn = connect(port)
        empty = rss_bytes(server.pid)
        started = time.monotonic()
        fill(sock, conn, options.sessions, options.size)
        elapsed = time.monotonic() - started
        full = rss_bytes(server.pid)
        per_item = (full - empty) / options.sessions
        print(f"sessions:            {options.sessions:,} of {options.size} bytes")
        print(f"fill time:           {elapsed:.1f} s ({options.sessions / elapsed:,.0f} writes/s)")
        print(f"RSS empty:           {empty / 2**20:,.1f} MiB")
        print(f"RSS full:            {full / 2**20:,.1f} MiB ({full / 1e9:.2f} GB)")
        print(
            f"per session:         {per_item:,.0f} bytes ({per_item - options.size:,.0f} overhead)"
        )
        sock.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


if __name__ == "__main__":
    main()
