"""Issue 13, acceptance: ``--max-memory 64M`` bounds everything clients can make the server hold.

A real server process is filled with a mix of sessions, 255-byte keys, placeholders with the
longest timeout the protocol carries, and many application names, until the clients get the
documented error (``StateServerFull``, the 503 path). Its RSS must stay within 64 MiB of the
baseline measured right after start, and it must still answer. Before the budget counted keys,
per-item and per-application overhead, 300,000 placeholders reached 175 MiB under 1 MiB.

Every loop is bounded by a count, so a server that never refuses fails the test instead of
hanging it.
"""

from __future__ import annotations

from pathlib import Path

from django_statemodes.exceptions import StateServerFull
from django_statemodes.stateserver.addresses import Address
from django_statemodes.stateserver.client import StateServerClient
from tests.fixtures_stateserver import StateServerProcess

MIB = 1024 * 1024
BUDGET = 64 * MIB
#: The largest timeout a client can send (u32 seconds, 136 years).
HUGE_TIMEOUT = 2**32 - 1
#: Bounds on the attack: far more than a 64 MiB budget can hold, so an unbounded server fails.
MAX_SESSIONS = 200
MAX_APPLICATIONS = 3_000
MAX_PLACEHOLDERS = 150_000


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def long_key(prefix: str, index: int) -> str:
    return f"{prefix}{index:08d}".ljust(255, "k")


def client(server: StateServerProcess, application: str = "default") -> StateServerClient:
    return StateServerClient(Address("127.0.0.1", server.port), timeout=10, application=application)


def test_max_memory_64m_bounds_sessions_keys_placeholders_and_applications() -> None:
    with StateServerProcess("--max-memory", "64M", "--purge-interval", "0") as server:
        main = client(server)
        assert main.ping(b"up") == b"up"
        baseline = rss(server.pid)
        refused: dict[str, int] = {}

        # 1. Sessions of 128 KiB under long keys: about a third of the budget.
        payload = b"s" * (128 * 1024)
        for index in range(MAX_SESSIONS // 2):
            assert main.set_and_release(
                long_key("s", index), payload, lock_id=None, timeout=HUGE_TIMEOUT, new_item=True
            )

        # 2. Many application names, each holding one placeholder: refused past the
        #    application limit (or the budget), never an unbounded number of stores.
        for index in range(MAX_APPLICATIONS):
            other = client(server, f"app-{index:05d}-" + "a" * 200)
            try:
                other.create_uninitialized(long_key("p", 0), HUGE_TIMEOUT)
            except StateServerFull:
                refused["applications"] = index
                break
            finally:
                other.close()

        # 3. Placeholders (no payload) with 255-byte keys until full: half with a 136-year
        #    timeout, half each with a timeout of its own (the store keeps a queue per timeout,
        #    so that is the costliest item a client can make).
        for index in range(MAX_PLACEHOLDERS):
            timeout = HUGE_TIMEOUT if index % 2 else 3600 + index
            try:
                main.create_uninitialized(long_key("p", index), timeout)
            except StateServerFull:
                refused["placeholders"] = index
                break

        # 4. More sessions: the budget is spent, so they are refused too.
        for index in range(MAX_SESSIONS // 2, MAX_SESSIONS):
            try:
                main.set_and_release(
                    long_key("s", index), payload, lock_id=None, timeout=60, new_item=True
                )
            except StateServerFull:
                refused["sessions"] = index
                break

        used = rss(server.pid)
        print(f"baseline RSS {baseline / MIB:.1f} MiB, filled {used / MIB:.1f} MiB, {refused}")
        assert set(refused) == {"applications", "placeholders", "sessions"}, refused
        assert used <= baseline + BUDGET, (
            f"RSS {used / MIB:.1f} MiB over 64 MiB + baseline {baseline / MIB:.1f} MiB"
        )
        # Still answering: a ping, an early session, the statistics.
        assert main.ping(b"still") == b"still"
        early = main.get(long_key("s", 0))
        assert early is not None and early.data == payload
        stats = main.stats()
        assert stats["bytes"] <= stats["max_memory"] == BUDGET
        assert server.proc is not None and server.proc.poll() is None


def machine_memory() -> int:
    """This machine's memory, or its container's limit if lower, read as a user would."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
            break
    else:
        raise AssertionError("no MemTotal line")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        path = Path(limit)
        if path.exists() and path.read_text().strip().isdigit():
            total = min(total, int(path.read_text()))
    return total


def test_without_max_memory_the_budget_is_half_the_machine_and_is_printed_at_start() -> None:
    with StateServerProcess("--purge-interval", "0") as server:
        stats = client(server).stats()
        assert stats["max_memory"] == machine_memory() // 2
        log = server.log.read_text()
    assert f"at most {machine_memory() // 2} bytes (default: half of this machine's memory)" in log
