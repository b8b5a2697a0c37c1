"""``--appendonly``: a ``kill -9`` loses at most about a second of acknowledged writes.

Redis's ``appendonly yes`` with ``appendfsync everysec`` is the anchor: every write is appended
to a log before it is answered, the log is fsynced once per second and rewritten into the
snapshot in the background, and a start replays it, dropping a record cut off by the crash.
Each test runs a real server process and kills it with SIGKILL: no shutdown snapshot is written.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from django_statemodes.exceptions import SnapshotError, StateServerError
from django_statemodes.stateserver.appendonly import (
    HEADER,
    AppendOnlyLog,
    Sessions,
    replay,
    restorable,
)
from django_statemodes.stateserver.client import StateServerClient
from tests.conftest import free_port
from tests.fixtures_stateserver import StateServerProcess, client_for
from tests.test_stateserver_snapshot import run_main

pytestmark = [pytest.mark.stateserver]


def appendonly_server(snapshot: Path, *extra: str) -> StateServerProcess:
    # No periodic snapshot: what survives a kill comes from the log alone.
    return StateServerProcess(
        "--snapshot", str(snapshot), "--appendonly", "--snapshot-interval", "0", *extra
    )


def put(client: StateServerClient, key: str, data: bytes) -> None:
    assert client.set_and_release(key, data, lock_id=None, timeout=600, new_item=True)


def served(client: StateServerClient, key: str) -> bytes | None:
    item = client.get(key)
    return None if item is None else item.data


def test_kill_9_under_a_steady_write_load_loses_no_write_acknowledged_a_second_before(
    tmp_path: Path,
) -> None:
    snapshot = tmp_path / "sessions.snap"
    server = appendonly_server(snapshot).start()
    acks: list[float] = []  # acks[i]: when write i (key w<i>) was acknowledged
    stop = threading.Event()

    def load() -> None:
        client = client_for(server)
        try:
            for index in range(200_000):  # bounded; the kill ends it long before
                if stop.is_set():
                    return
                put(client, f"w{index:07d}", f"value-{index}".encode() * 20)
                acks.append(time.monotonic())
        except StateServerError:
            return  # the server was killed: this write was never acknowledged
        finally:
            client.close()

    writer = threading.Thread(target=load)
    writer.start()
    try:
        deadline = time.monotonic() + 30
        # A steady load for a while, so writes older than a second exist.
        while len(acks) < 3000 or time.monotonic() - acks[0] < 2.5:
            assert writer.is_alive() and time.monotonic() < deadline, len(acks)
            time.sleep(0.05)
        server.kill()
        killed = time.monotonic()
    finally:
        stop.set()
        writer.join(30)
    assert not writer.is_alive()
    acknowledged = len(acks)
    assert acknowledged >= 3000

    server.start()
    try:
        client = client_for(server)
        lost = []
        for index in range(acknowledged):
            data = served(client, f"w{index:07d}")
            if data is None:
                lost.append(index)
            else:
                assert data == f"value-{index}".encode() * 20  # intact, not only present
        older = [index for index in lost if acks[index] < killed - 1.0]
        assert older == []
        assert len(lost) <= sum(1 for t in acks if t >= killed - 2.0)
        # Appended before the reply, a write outlives a killed process in the page cache:
        # nothing acknowledged is lost at all (the fsync's second matters for a power loss).
        assert lost == []
    finally:
        server.stop()


def test_a_torn_last_record_is_dropped_with_a_warning_and_the_rest_served(
    tmp_path: Path,
) -> None:
    snapshot = tmp_path / "sessions.snap"
    server = appendonly_server(snapshot).start()
    client = client_for(server)
    for index in range(50):
        put(client, f"k{index:02d}", b"x" * 100)
    client.close()
    server.kill()
    log = Path(f"{snapshot}.aof")
    with open(log, "r+b") as stream:  # what a kill in the middle of a write(2) leaves
        stream.truncate(log.stat().st_size - 3)

    server.log.unlink(missing_ok=True)
    server.start()
    try:
        client = client_for(server)
        assert [served(client, f"k{index:02d}") for index in range(49)] == [b"x" * 100] * 49
        assert served(client, "k49") is None  # the torn record
        put(client, "after", b"y")
    finally:
        server.stop()
    text = server.log.read_text()
    assert text.count("ends with an incomplete record") == 1

    # The start truncated it: the next start finds a clean log and everything, warning once.
    server.log.unlink()
    server.start()
    try:
        client = client_for(server)
        assert served(client, "k48") == b"x" * 100 and served(client, "after") == b"y"
    finally:
        server.kill()
    assert "incomplete record" not in server.log.read_text()


def test_the_log_is_rewritten_into_the_snapshot_in_the_background(tmp_path: Path) -> None:
    snapshot = tmp_path / "sessions.snap"
    log = Path(f"{snapshot}.aof")
    server = appendonly_server(snapshot, "--appendonly-rewrite-size", "64K").start()
    written = 0
    try:
        client = client_for(server)
        for index in range(300):  # ~330 KB of log: past 64 KiB
            put(client, f"r{index:03d}", os.urandom(1000))
            written += 1
        deadline = time.monotonic() + 20
        while client.stats().get("last_snapshot") is None:
            assert time.monotonic() < deadline, server.log.read_text()[-2000:]
            time.sleep(0.05)
        assert "append-only log rewritten" in server.log.read_text()
        assert log.stat().st_size < 64 * 1024  # appends start over in a fresh log
        for index in range(300, 350):  # after the rewrite: in the new log only
            put(client, f"r{index:03d}", os.urandom(1000))
        assert client.remove(key="r000", lock_id=None)
        expected = {f"r{index:03d}": served(client, f"r{index:03d}") for index in range(350)}
        client.close()
        for path in (snapshot, log):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert sorted(os.listdir(tmp_path)) == ["sessions.snap", "sessions.snap.aof"]
    finally:
        server.kill()

    server.start()
    try:
        client = client_for(server)
        assert {key: served(client, key) for key in expected} == expected
        assert expected["r000"] is None and expected["r349"] is not None
    finally:
        server.stop()


def test_removes_purges_and_lock_ids_after_a_restart(tmp_path: Path) -> None:
    snapshot = tmp_path / "sessions.snap"
    server = appendonly_server(snapshot).start()
    try:
        client, other = client_for(server), client_for(server, application="other")
        for key in ("kept", "removed", "locked"):
            put(client, key, key.encode())
        put(other, "purged", b"p")
        assert client.remove("removed", None)
        assert other.purge() == 1
        locked = client.get_exclusive("locked")
        assert locked is not None and not locked.locked
        # A save that releases: logged as the session's new state.
        assert client.set_and_release("kept", b"kept2", lock_id=None, timeout=600)
        client.close()
        other.close()
    finally:
        server.kill()

    server.start()
    try:
        client, other = client_for(server), client_for(server, application="other")
        assert served(client, "kept") == b"kept2"
        assert served(client, "removed") is None
        assert served(other, "purged") is None
        # Locks are not logged (as the snapshot keeps none): the session is served unlocked,
        # and the lock id from before the kill matches no lock.
        item = client.get("locked")
        assert item is not None and item.data == b"locked" and not item.locked
        assert not client.set_and_release("locked", b"late", lock_id=locked.lock_id, timeout=600)
        assert served(client, "locked") == b"locked"
    finally:
        server.stop()


def test_a_failed_rewrite_keeps_appending_and_loses_nothing(tmp_path: Path) -> None:
    snapshot = tmp_path / "sessions.snap"
    server = appendonly_server(snapshot, "--appendonly-rewrite-size", "16K").start()
    try:
        client = client_for(server)
        put(client, "first", b"1")
        # A directory in the snapshot's way: each rewrite fills PATH.tmp, then the rename fails
        # (as a full disk fails the write); appends have moved to PATH.aof.next meanwhile.
        snapshot.unlink()
        snapshot.mkdir()
        for index in range(40):
            put(client, f"big{index:02d}", os.urandom(1000))
        deadline = time.monotonic() + 20
        while "Could not write the snapshot" not in server.log.read_text():
            assert time.monotonic() < deadline, server.log.read_text()[-2000:]
            time.sleep(0.05)
        put(client, "last", b"L")
        client.close()
    finally:
        server.kill()
    assert Path(f"{snapshot}.aof.next").exists()
    snapshot.rmdir()  # the operator clears the way

    server.start()
    try:
        client = client_for(server)
        assert served(client, "first") == b"1" and served(client, "last") == b"L"
        assert all(served(client, f"big{index:02d}") is not None for index in range(40))
    finally:
        server.stop()
    assert sorted(os.listdir(tmp_path)) == ["sessions.snap", "sessions.snap.aof"]


def test_appendonly_needs_a_snapshot_path(tmp_path: Path) -> None:
    result = run_main("--port", str(free_port()), "--appendonly")
    assert result.returncode == 2
    assert "--appendonly needs --snapshot PATH" in result.stderr
    missing = tmp_path / "missing" / "s.snap"
    result = run_main("--port", str(free_port()), "--appendonly", "--snapshot", str(missing))
    assert result.returncode == 2 and "cannot be written" in result.stderr


# The log's format, without a server: what a start accepts, drops or refuses.


def write_log(path: Path, *writes: tuple[str, str, bytes]) -> AppendOnlyLog:
    log = AppendOnlyLog(str(path))
    for app, key, data in writes:
        log.set(app, key, data, 600)
    log.sync()
    return log


def test_a_zeroed_tail_is_dropped_and_a_bad_record_followed_by_others_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.aof"
    write_log(path, ("a", "k1", b"v1"), ("a", "k2", b"v2")).close()
    good = path.read_bytes()
    # A power loss may leave zeros where the last pages were not yet written.
    path.write_bytes(good + bytes(4096))
    sessions: Sessions = {}
    assert replay(sessions, str(path)) == 2
    assert set(sessions["a"]) == {"k1", "k2"}

    # One flipped byte in the first record's data, with a good record after it: corruption.
    corrupt = bytearray(good)
    corrupt[len(HEADER) + 30] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(SnapshotError, match="corrupt at byte 6"):
        replay({}, str(path))

    # Killed while creating the file: part of the header only.
    path.write_bytes(HEADER[:3])
    assert replay({}, str(path)) == 0
    path.write_bytes(b"not a log at all")
    with pytest.raises(SnapshotError, match="bad magic"):
        replay({}, str(path))


def test_a_replayed_session_keeps_the_lifetime_it_had_at_the_last_record(tmp_path: Path) -> None:
    path = tmp_path / "s.aof"
    log = write_log(path, ("a", "old", b"1"))
    time.sleep(0.2)  # the records' own wall times, not a bound on anything
    log.set("a", "new", b"2", 600)
    log.close()
    sessions: Sessions = {"a": {"snap": (b"0", 600, 100.0, None)}}
    replay(sessions, str(path))
    left = {key: seconds for key, _, _, seconds in restorable(sessions)["a"]}
    assert left["new"] == 600 and left["snap"] == 100.0
    assert left["old"] < 600 - 0.19  # it aged until the last record: downtime does not count
