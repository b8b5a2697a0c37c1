"""Real uvicorn and ``manage.py runserver`` processes for tests, and what to measure in them.

Like tests/server.py's gunicorn helper: a server on a free loopback port, ready once it answers
``/ping/``, stopped by its pid. Its stdout and stderr go to a log file the test may read (the
500 tracebacks Django's request logger writes there). Helpers count the store connections of
the server's processes from /proc, which needs no cooperation from the drivers.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port
from tests.server import get, increment_concurrently, session_cookie

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.asgiapp.asgi:application"
SETTINGS = "tests.asgiapp.settings"


@dataclass
class Server:
    """A running server: its port, its master process and its log file."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: uvicorn's workers, or the server itself.

        uvicorn with ``--workers 1`` serves in its own process; with more, in children of the
        master (multiprocessing's spawn).
        """
        children = child_pids(self.process.pid)
        return children or [self.process.pid]


def child_pids(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name, in parentheses, may hold spaces: the fields follow the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def _start(
    command: list[str], env: dict[str, str], name: str
) -> tuple[subprocess.Popen[bytes], Path]:
    full_env = {**os.environ, "DJANGO_SETTINGS_MODULE": SETTINGS, **env}
    handle, log_name = tempfile.mkstemp(prefix=f"statemodes-{name}-", suffix=".log")
    with os.fdopen(handle, "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    return process, Path(log_name)


@contextmanager
def _serving(process: subprocess.Popen[bytes], port: int, log: Path) -> Iterator[Server]:
    server = Server(port, process, log)
    workers: list[int] = []
    try:
        wait_ready(server)
        workers = server.worker_pids()
        yield server
    finally:
        stop(process, workers)
        if sys.exc_info()[0] is None:
            log.unlink(missing_ok=True)
        else:
            print(f"server log kept: {log}\n{server.log()[-3000:]}", file=sys.stderr)


def stop(process: subprocess.Popen[bytes], workers: list[int]) -> None:
    """SIGTERM the master, then make sure it and the workers it started are gone."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pid in workers:
        if pid != process.pid and Path(f"/proc/{pid}").exists():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@contextmanager
def uvicorn(workers: int, env: dict[str, str]) -> Iterator[Server]:
    """Serve tests.asgiapp with ``uvicorn --workers N``; yield the server; stop it."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", APP,
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--log-level", "warning", "--no-access-log",
        # Django has no lifespan support; "auto" would log that it has none.
        "--lifespan", "off",
        "--timeout-graceful-shutdown", "5",
    ]  # fmt: skip
    process, log = _start(command, env, "uvicorn")
    with _serving(process, port, log) as server:
        yield server


@contextmanager
def runserver(env: dict[str, str]) -> Iterator[Server]:
    """Serve tests.asgiapp with ``manage.py runserver --noreload`` (threaded: a thread per
    request); yield the server; stop it."""
    port = free_port()
    command = [
        sys.executable, "manage.py", "runserver", "--noreload", "--skip-checks",
        f"127.0.0.1:{port}",
    ]  # fmt: skip
    process, log = _start(command, env, "runserver")
    with _serving(process, port, log) as server:
        yield server


def wait_ready(server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"server exited with {server.process.returncode}:\n{server.log()[-3000:]}"
            )
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
            conn.request("GET", "/ping/")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on port {server.port} did not answer within {timeout} s")


def new_session(port: int, path: str = "/aincrement/") -> str:
    """Create a session (counter 1); return its key."""
    status, headers, body = get(port, path)
    assert status == 200, body
    return session_cookie(headers)


def counter(port: int, key: str) -> int:
    status, _, body = get(port, "/read/", key)
    assert status == 200, body
    value: int = json.loads(body)["counter"]
    return value


@dataclass
class Hammered:
    expected: int
    actual: int
    refused: int  # 503 + Retry-After answers, retried: the request never ran its view


def hammer(port: int, path: str, *, clients: int = 8, increments: int = 50) -> Hammered:
    """Create a session (counter 1), then ``clients`` x ``increments`` concurrent increments.

    503 + Retry-After answers are retried (``tests.server.increment_concurrently``).
    """
    key = new_session(port, path)
    refused = increment_concurrently(port, path, key, clients=clients, increments=increments)
    return Hammered(1 + clients * increments, counter(port, key), refused)


# Store connections of a set of processes, counted from their file descriptors.


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def tcp_connections(pids: list[int], remote_port: int) -> dict[int, list[int]]:
    """For each pid, the local ports of its TCP sockets to 127.0.0.1:``remote_port``.

    Every state but LISTEN counts: a socket in CLOSE_WAIT still holds its descriptor and, for
    a database, its server process.
    """
    by_inode: dict[int, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if state != "0A" and int(remote.split(":")[1], 16) == remote_port:
            by_inode[inode] = int(local.split(":")[1], 16)
    return {pid: sorted(by_inode[i] for i in _socket_inodes(pid) if i in by_inode) for pid in pids}


def open_handles(pids: list[int], path: str) -> dict[int, int]:
    """For each pid, how many of its descriptors are open on the file ``path``."""
    real = os.path.realpath(path)
    counts = {}
    for pid in pids:
        count = 0
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            fds = []
        for fd in fds:
            try:
                if os.readlink(fd) == real:
                    count += 1
            except OSError:
                continue
        counts[pid] = count
    return counts
