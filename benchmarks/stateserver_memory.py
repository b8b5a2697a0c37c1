"""Fill a real state server with N sessions of 1 KB and check its memory (RSS) against the target.

Target (DESIGN.md §5, docs/stateserver.md): 1,000,000 sessions of 1 KB within 2 GB of resident
memory. Run at full size it needs about 1.5 GB and a few minutes; with fewer ``--sessions`` the
RSS at 1,000,000 is projected from the measured cost per session, and reported as projected.

Run: ``python -m benchmarks.stateserver_memory [--sessions 1000000] [--size 1024] [--no-save]``

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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.results import record  # noqa: E402
from django_statemodes.stateserver import protocol as p  # noqa: E402

BATCH = 1000
TARGET_SESSIONS = 1_000_000
TARGET_SIZE = 1024
TARGET_RSS = 2 * 10**9  # "2 GB": decimal, as the RSS is printed in GB below


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


def measure(sessions: int, size: int) -> dict[str, Any]:
    """Start a server, fill it, and return what it cost."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "django_statemodes.stateserver", "--port", str(port)]
    server = subprocess.Popen(command + ["--log-level", "WARNING"], env=env)
    try:
        sock, conn = connect(port)
        empty = rss_bytes(server.pid)
        started = time.monotonic()
        fill(sock, conn, sessions, size)
        elapsed = time.monotonic() - started
        full = rss_bytes(server.pid)
        sock.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    per_session = (full - empty) / sessions
    # Below the target count, project: the empty server plus the measured cost per session.
    projected = sessions < TARGET_SESSIONS
    at_target = empty + per_session * TARGET_SESSIONS if projected else full
    return {
        "sessions": sessions,
        "size": size,
        "fill_seconds": round(elapsed, 3),
        "writes_per_second": round(sessions / elapsed),
        "rss_empty_bytes": empty,
        "rss_full_bytes": full,
        "bytes_per_session": round(per_session),
        "overhead_per_session": round(per_session - size),
        "target": {"sessions": TARGET_SESSIONS, "size": TARGET_SIZE, "rss_bytes": TARGET_RSS},
        "rss_at_target_bytes": round(at_target),
        "projected": projected,
        # Smaller sessions than the target's cannot answer it; larger ones can (conservatively).
        "met": None if size < TARGET_SIZE else at_target <= TARGET_RSS,
    }


def report(result: dict[str, Any]) -> str:
    sessions, size = result["sessions"], result["size"]
    per_session = result["bytes_per_session"]
    at_target = result["rss_at_target_bytes"]
    how = f"projected from {sessions:,} sessions" if result["projected"] else "measured"
    if result["met"] is None:
        verdict = f"not judged (sessions of {size} bytes are smaller than the target's)"
    else:
        verdict = "met" if result["met"] else "NOT met"
    lines = [
        f"sessions:            {sessions:,} of {size} bytes",
        f"fill time:           {result['fill_seconds']:.1f} s "
        f"({result['writes_per_second']:,} writes/s)",
        f"RSS empty:           {result['rss_empty_bytes'] / 2**20:,.1f} MiB",
        f"RSS full:            {result['rss_full_bytes'] / 2**20:,.1f} MiB "
        f"({result['rss_full_bytes'] / 1e9:.2f} GB)",
        f"per session:         {per_session:,} bytes ({result['overhead_per_session']:,} overhead)",
        f"RSS at target:       {at_target / 1e9:.2f} GB ({how})",
        f"target:              {TARGET_SESSIONS:,} sessions of {TARGET_SIZE // 1024} KB "
        f"within {TARGET_RSS / 1e9:.0f} GB: {verdict}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stateserver_memory", description=__doc__
    )
    parser.add_argument(
        "--sessions", type=int, default=TARGET_SESSIONS, help="sessions stored (%(default)s)"
    )
    parser.add_argument(
        "--size", type=int, default=TARGET_SIZE, help="payload bytes per session (%(default)s)"
    )
    parser.add_argument("--no-save", action="store_true", help="do not write results/latest.json")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.size < 1:
        parser.error("--sessions and --size must be positive")
    result = measure(args.sessions, args.size)
    print(report(result))
    if not args.no_save:
        record("stateserver_memory", result)


if __name__ == "__main__":
    main()
