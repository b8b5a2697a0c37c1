"""Snapshot atomicity: the file at ``--snapshot PATH`` is always a complete snapshot.

``write_snapshot`` writes ``PATH.tmp``, fsyncs it and renames it over PATH. These tests show
the consequences a crash relies on: a half-written ``PATH.tmp`` left by a killed server is never
read and is replaced by the next write, and a reader of PATH never sees a partial file.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from django_statemodes.exceptions import SnapshotError
from django_statemodes.stateserver.snapshot import MAGIC, read_snapshot
from tests.conftest import free_port
from tests.fixtures_stateserver import ROOT, StateServerProcess, client_for

pytestmark = [pytest.mark.stateserver]


def keys_in(path: Path) -> set[str]:
    return {key for items in read_snapshot(str(path)).values() for key, *_ in items}


def wait_for_keys(path: Path, expected: set[str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and expected <= keys_in(path):
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not come to hold {expected} within {timeout} s")


def test_a_half_written_tmp_file_is_ignored_at_start_and_replaced_by_the_next_write(
    tmp_path: Path,
) -> None:
    snapshot = tmp_path / "sessions.snap"
    leftover = tmp_path / "sessions.snap.tmp"
    with StateServerProcess("--snapshot", str(snapshot)) as server:
        client_for(server).set_and_release("kept", b"v1", lock_id=None, timeout=600, new_item=True)
    assert keys_in(snapshot) == {"kept"}
    # What a server killed in the middle of a write leaves: the start of a snapshot, cut off.
    leftover.write_bytes(MAGIC + b"\x01\x00\x07def")
    with pytest.raises(SnapshotError, match="cut off"):
        read_snapshot(str(leftover))

    with StateServerProcess("--snapshot", str(snapshot)) as server:
        client = client_for(server)
        item = client.get("kept")
        assert item is not None and item.data == b"v1"  # loaded from PATH, not from PATH.tmp
        client.set_and_release("added", b"v2", lock_id=None, timeout=600, new_item=True)
    # The shutdown snapshot went through PATH.tmp and renamed it: nothing is left beside PATH.
    assert not leftover.exists()
    assert keys_in(snapshot) == {"kept", "added"}
    assert sorted(os.listdir(tmp_path)) == ["sessions.snap"]


def test_a_snapshot_is_replaced_whole_never_rewritten_in_place(tmp_path: Path) -> None:
    snapshot = tmp_path / "sessions.snap"
    count = 3000
    args = ("--snapshot", str(snapshot), "--snapshot-interval", "0.1")
    with StateServerProcess(*args) as server:
        client = client_for(server)
        for index in range(count):  # a file of a few MB: a rewrite in place takes a while
            client.set_and_release(
                f"s{index:05d}", os.urandom(1000), lock_id=None, timeout=600, new_item=True
            )
        wait_for_keys(snapshot, {f"s{count - 1:05d}"})

        # A reader holding the current file open keeps reading that complete file after the
        # server has written a newer one: PATH was renamed over, not truncated and rewritten.
        with open(snapshot, "rb") as held:
            before = held.read()
            client.set_and_release("newer", b"x", lock_id=None, timeout=600, new_item=True)
            wait_for_keys(snapshot, {"newer"})
            held.seek(0)
            assert held.read() == before
        assert before.startswith(MAGIC)

        # Readers racing several rewrites only ever find a complete snapshot at PATH.
        failures: list[str] = []
        reads = 0
        inodes: set[int] = set()
        deadline = time.monotonic() + 30
        while len(inodes) < 3 or reads < 20:  # until several rewrites were raced, not a time
            assert time.monotonic() < deadline, (len(inodes), reads)
            inodes.add(os.stat(snapshot).st_ino)
            try:
                found = keys_in(snapshot)
            except SnapshotError as exc:
                failures.append(str(exc))
            else:
                reads += 1
                if len(found) != count + 1:
                    failures.append(f"{len(found)} sessions")
        assert failures == []  # several snapshots were written meanwhile, each a new file


# Start-up, permissions and failed writes. Redis checks its dump directory at start (``dir``),
# writes the dump readable by its own user only, and removes its temporary file when a save
# fails; ASP.NET's state service writes nothing to disk, so these follow Redis.


def run_main(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "django_statemodes.stateserver", *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)


def test_a_snapshot_directory_that_does_not_exist_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "sessions.snap"
    result = run_main("--port", str(free_port()), "--snapshot", str(path))
    assert result.returncode == 2, result.stderr
    assert str(path.parent) in result.stderr and "cannot be written" in result.stderr
    assert not path.parent.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_a_read_only_snapshot_directory_is_refused_at_start(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir(mode=0o500)
    try:
        result = run_main("--port", str(free_port()), "--snapshot", str(directory / "s.snap"))
    finally:
        directory.chmod(0o700)
    assert result.returncode == 2, result.stderr
    assert "cannot be written" in result.stderr
    assert os.listdir(directory) == []


def test_the_snapshot_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    snapshot = tmp_path / "sessions.snap"
    with StateServerProcess("--snapshot", str(snapshot)) as server:
        client_for(server).set_and_release("k", b"secret", lock_id=None, timeout=600, new_item=True)
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600


def test_a_failed_write_removes_its_tmp_file_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    snapshot = tmp_path / "sessions.snap"
    server = StateServerProcess("--snapshot", str(snapshot), "--snapshot-interval", "0.2")
    server.log.unlink(missing_ok=True)
    with server:
        client = client_for(server)
        client.set_and_release("before", b"v1", lock_id=None, timeout=600, new_item=True)
        wait_for_keys(snapshot, {"before"})
        # A directory in the way of the rename: each write fills PATH.tmp, then os.replace fails
        # (as a full disk fails the write itself). Root ignores permission bits; this it cannot.
        snapshot.unlink()
        snapshot.mkdir()
        deadline = time.monotonic() + 15
        while "Could not write the snapshot" not in server.log.read_text():
            assert time.monotonic() < deadline, server.log.read_text()[-2000:]
            time.sleep(0.05)
        client.set_and_release("after", b"v2", lock_id=None, timeout=600, new_item=True)
        item = client.get("after")
        assert item is not None and item.data == b"v2"  # still serving
    # The last write, at shutdown, failed the same way: the exit says so, and no .tmp is left.
    assert server.proc is not None and server.proc.returncode == 2
    assert sorted(os.listdir(tmp_path)) == ["sessions.snap"]
