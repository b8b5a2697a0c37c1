"""The state server over real sockets: bad clients, secrets, limits, namespaces, commands."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from django_statemodes.exceptions import StateServerFull, StateServerUnavailable
from django_statemodes.stateserver import protocol as p
from django_statemodes.stateserver.server import ITEM_OVERHEAD
from tests.conftest import free_port
from tests.fixtures_stateserver import ROOT, StateServerProcess, client_for

pytestmark = [pytest.mark.stateserver]


def raw_connection(server: StateServerProcess) -> socket.socket:
    """A socket past the handshake, for sending bytes no client would send."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    conn = p.Connection(p.CLIENT)
    conn.receive_data(sock.recv(1024))
    conn.next_event()
    sock.sendall(conn.send(p.Hello(client_nonce=b"c" * 16)))
    conn.receive_data(sock.recv(1024))
    assert isinstance(conn.next_event(), p.Ready)
    return sock


def read_error(sock: socket.socket) -> p.Error:
    conn = p.Connection(p.CLIENT)
    conn.welcomed = True
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, p.Error), event
    assert conn.next_event() is p.NEED_DATA  # the server closed right after the error
    return event


def test_garbage_closes_only_that_connection(stateserver: StateServerProcess) -> None:
    good = client_for(stateserver)
    good.set_and_release("garbage-test", b"kept", lock_id=None, timeout=60, new_item=True)
    bad = raw_connection(stateserver)
    bad.sendall(b"\x00\x00\x00\x09\xee" + os.urandom(64))
    assert read_error(bad).code == p.ErrorCode.UNKNOWN_TYPE
    assert good.get("garbage-test").data == b"kept"  # type: ignore[union-attr]


def test_an_oversized_frame_is_refused_before_it_is_read(stateserver: StateServerProcess) -> None:
    bad = raw_connection(stateserver)
    bad.sendall(struct.pack("!IBI", 1 << 30, p.SetAndRelease.TYPE, 1))
    error = read_error(bad)
    assert error.code == p.ErrorCode.FRAME_TOO_LARGE
    assert "over the limit" in error.message
    assert client_for(stateserver).ping(b"alive") == b"alive"


def test_a_truncated_frame_then_a_hang_up_leaves_the_server_running(
    stateserver: StateServerProcess,
) -> None:
    conn = p.Connection(p.CLIENT)
    conn.welcomed = conn.hello_done = True
    frame = conn.send(p.SetAndRelease(1, "cut-short", b"x" * 100, None, 60, True))
    bad = raw_connection(stateserver)
    bad.sendall(frame[:50])
    bad.close()
    client = client_for(stateserver)
    assert client.get("cut-short") is None
    assert client.ping() == b""


def test_garbage_before_the_handshake_is_refused(stateserver: StateServerProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", stateserver.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    conn = p.Connection(p.CLIENT)
    conn.receive_data(data)
    assert isinstance(conn.next_event(), p.Welcome)
    error = conn.next_event()
    assert isinstance(error, p.Error)


def test_a_slow_client_delays_nobody_and_is_closed_after_the_frame_timeout() -> None:
    with StateServerProcess("--frame-timeout", "1") as server:
        slow = raw_connection(server)
        conn = p.Connection(p.CLIENT)
        conn.welcomed = conn.hello_done = True
        slow.sendall(conn.send(p.Ping(1, b"x" * 1000))[:20])  # and never the rest
        client = client_for(server)
        for index in range(200):
            key = f"busy-{index}"
            assert client.set_and_release(key, b"v", lock_id=None, timeout=60, new_item=True)
        assert client.get("busy-199").data == b"v"  # type: ignore[union-attr]
        # Closed for its unfinished frame (BAD_FRAME), with the socket's own timeout far above
        # the 1 s frame timeout: nothing else would have closed it in time.
        slow.settimeout(60)
        assert read_error(slow).code == p.ErrorCode.BAD_FRAME


def test_a_dropped_connection_releases_its_locks_and_wakes_the_waiter(
    stateserver: StateServerProcess,
) -> None:
    holder, waiter = client_for(stateserver), client_for(stateserver)
    holder.set_and_release("dropped", b"v", lock_id=None, timeout=60, new_item=True)
    item = holder.get_exclusive("dropped")
    assert item is not None and not item.locked
    woken: list[bool] = []

    def wait() -> None:
        # True only when the server says the lock ended; its 600 s timeout would say False.
        woken.append(waiter.wait("dropped", item.lock_id, 600))

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    time.sleep(0.3)
    holder.close()  # the web process died: its socket closes
    thread.join(60)
    assert woken == [True]
    assert waiter.get_exclusive("dropped").locked is False  # type: ignore[union-attr]


def test_applications_are_separate_namespaces(stateserver: StateServerProcess) -> None:
    shop, blog = (
        client_for(stateserver, application="shop"),
        client_for(stateserver, application="blog"),
    )
    shop.set_and_release("shared-key", b"shop", lock_id=None, timeout=60, new_item=True)
    assert blog.get("shared-key") is None
    assert blog.set_and_release("shared-key", b"blog", lock_id=None, timeout=60, new_item=True)
    assert shop.get("shared-key").data == b"shop"  # type: ignore[union-attr]
    assert blog.purge() == 1
    assert shop.get("shared-key") is not None


def _run_main(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "django_statemodes.stateserver", *args]
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=full_env)


def test_a_non_loopback_address_needs_allow_remote_and_a_secret() -> None:
    refused = _run_main("--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2
    assert "--allow-remote" in refused.stderr
    no_secret = _run_main("--host", "0.0.0.0", "--port", str(free_port()), "--allow-remote")
    assert no_secret.returncode == 2
    assert "secret" in no_secret.stderr


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-connections", "0"), ("--handshake-timeout", "0"), ("--idle-timeout", "-1")],
)
def test_connection_limits_out_of_range_are_refused_naming_the_flag(flag: str, value: str) -> None:
    refused = _run_main("--port", str(free_port()), flag, value)
    assert refused.returncode == 2
    assert flag in refused.stderr


def test_a_wrong_or_missing_secret_is_refused_and_the_right_one_works(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("correct horse battery staple, and then some\n")
    args = ("--allow-remote", "--secret-file", str(secret_file))
    with StateServerProcess(*args) as server:
        with pytest.raises(StateServerUnavailable, match="STATEMODES_STATE_SECRET") as wrong:
            client_for(server, secret="wrong").ping()
        assert wrong.value.setting == "STATEMODES_STATE_SECRET"
        with pytest.raises(StateServerUnavailable, match="requires a shared secret"):
            client_for(server).ping()
        assert (
            client_for(server, secret="correct horse battery staple, and then some").ping(b"ok")
            == b"ok"
        )
    env = {"STATEMODES_STATE_SECRET": "from-the-environment-32-bytes-or-more"}
    with StateServerProcess("--allow-remote", env=env) as server:
        assert (
            client_for(server, secret="from-the-environment-32-bytes-or-more").ping(b"ok") == b"ok"
        )
        with pytest.raises(StateServerUnavailable):
            client_for(server, secret="from-file").ping()


def test_a_client_with_a_secret_refuses_a_server_without_one(
    stateserver: StateServerProcess,
) -> None:
    with pytest.raises(StateServerUnavailable, match="does not use a shared secret"):
        client_for(stateserver, secret="s").ping()


def test_max_memory_refuses_writes_with_a_clear_error_and_loses_nothing() -> None:
    with StateServerProcess("--max-memory", "10K") as server:
        client = client_for(server)
        assert client.set_and_release("first", b"a" * 6000, lock_id=None, timeout=60, new_item=True)
        with pytest.raises(StateServerFull, match="--max-memory 10240"):
            client.set_and_release("second", b"b" * 6000, lock_id=None, timeout=60, new_item=True)
        assert client.get("first").data == b"a" * 6000  # type: ignore[union-attr]
        assert client.get("second") is None
        assert client.remove("first")
        assert client.set_and_release(
            "second", b"b" * 6000, lock_id=None, timeout=60, new_item=True
        )


def test_the_snapshot_is_binary_and_a_corrupt_one_stops_the_start(tmp_path: Path) -> None:
    snapshot = tmp_path / "sessions.snap"
    with StateServerProcess("--snapshot", str(snapshot)) as server:
        client_for(server).set_and_release(
            "snap", b"\x00data", lock_id=None, timeout=60, new_item=True
        )
    content = snapshot.read_bytes()
    assert content.startswith(b"SMSNAP\x02")  # version 2: with the index of sessions by user
    assert b"\x80\x04" not in content[:8]  # not a pickle stream
    snapshot.write_bytes(content[:-3])  # cut off
    result = _run_main("--port", str(free_port()), "--snapshot", str(snapshot))
    assert result.returncode == 2
    assert "cut off" in result.stderr
    assert snapshot.read_bytes() == content[:-3]  # left for the operator, not overwritten


def test_runstateserver_uses_the_site_settings_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        DJANGO_SETTINGS_MODULE="tests.farmapp.settings",
        FARM_STATE_CONNECTION=f"tcpip=127.0.0.1:{port}",
    )
    command = [sys.executable, "-m", "django", "runstateserver"]
    process = subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        server = StateServerProcess(port=port)
        from tests.fixtures_stateserver import wait_for_port

        wait_for_port(port)
        client = client_for(server, application="farm")
        client.set_and_release("cmd", b"v", lock_id=None, timeout=60, new_item=True)
        stats = subprocess.run(
            [*command, "--stats"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert stats.returncode == 0, stats.stderr
        assert f"State server at 127.0.0.1:{port}" in stats.stdout
        assert "sessions:              1" in stats.stdout
        assert '"farm"' in stats.stdout
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    assert "State server stopped" in process.stderr.read()


def test_stats_report_sessions_locks_waiters_and_rates(
    stateserver: StateServerProcess,
    settings: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = client_for(stateserver, application="stats")
    client.set_and_release("stats", b"12345", lock_id=None, timeout=60, new_item=True)
    assert client.get_exclusive("stats") is not None
    stats = client.stats()
    # Charged: the payload, the key and the per-item overhead (--max-memory counts them all).
    assert stats["applications"]["stats"] == {
        "sessions": 1,
        "bytes": 5 + 5 + ITEM_OVERHEAD,
        "bound": 0,
    }
    assert stats["locks"] >= 1
    assert stats["operations"] >= 3
    assert {"waiters", "operations_per_second", "connections", "uptime"} <= set(stats)
    settings.STATEMODES_STATE_CONNECTION = stateserver.connection
    settings.STATEMODES_APPLICATION_NAME = "stats"
    call_command("runstateserver", stats=True)
    assert "locks:" in capsys.readouterr().out


def test_the_console_script_entry_point(
    stateserver: StateServerProcess,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from django_statemodes.stateserver.__main__ import main

    assert main(["--host", "0.0.0.0", "--port", str(free_port())]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert main(["--port", str(stateserver.port), "--stats"]) == 0
    assert f"State server at 127.0.0.1:{stateserver.port}" in capsys.readouterr().out
    assert main(["--port", str(free_port()), "--stats"]) == 1
    assert "Unable to make the session state request" in capsys.readouterr().err


def test_the_server_sweeps_expired_sessions_unless_told_to_leave_them() -> None:
    with StateServerProcess("--purge-interval", "0.2") as sweeping:
        client = client_for(sweeping, application="sweep")
        client.set_and_release("short", b"v", lock_id=None, timeout=1, new_item=True)
        assert client.stats()["applications"]["sweep"]["sessions"] == 1
        deadline = time.monotonic() + 30
        # Swept, unread; the application is freed with its last session.
        while "sweep" in client.stats()["applications"]:
            assert time.monotonic() < deadline, "the expired session was never swept"
            time.sleep(0.1)
    with StateServerProcess("--purge-interval", "0") as keeping:
        client = client_for(keeping, application="sweep")
        client.set_and_release(
            "short", b"kept for session_end", lock_id=None, timeout=1, new_item=True
        )
        time.sleep(1.3)
        assert client.get("short") is None  # expired: never served
        ended: list[Any] = []
        assert client.purge_expired(on_expired=ended.append) == 1
        assert [(e.session_key, e.data) for e in ended] == [("short", b"kept for session_end")]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_server_runs_on_the_event_loop_it_is_told_to_use(loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    with StateServerProcess("--loop", loop) as server:
        holder, waiter = client_for(server), client_for(server)
        assert holder.stats()["loop"] == loop
        holder.set_and_release("on-loop", b"v1", lock_id=None, timeout=60, new_item=True)
        item = holder.get_exclusive("on-loop")
        assert item is not None and item.data == b"v1"
        timer = threading.Timer(
            0.2,
            lambda: holder.set_and_release("on-loop", b"v2", lock_id=item.lock_id, timeout=60),
        )
        timer.start()
        assert waiter.wait("on-loop", item.lock_id, 600) is True  # woken: a timeout says False
        timer.join()
        assert waiter.get("on-loop").data == b"v2"  # type: ignore[union-attr]


def test_auto_takes_uvloop_when_installed_and_asyncio_otherwise(tmp_path: Path) -> None:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        expected = "asyncio"
    else:
        expected = "uvloop"
    with StateServerProcess() as server:
        assert client_for(server).stats()["loop"] == expected
    # A uvloop that cannot be imported: auto falls back, --loop uvloop says what to install.
    (tmp_path / "uvloop.py").write_text("raise ImportError('uvloop is not installed here')\n")
    with StateServerProcess(env={"PYTHONPATH": str(tmp_path)}) as server:
        assert client_for(server).stats()["loop"] == "asyncio"
    result = subprocess.run(
        [sys.executable, "-m", "django_statemodes.stateserver", "--port", str(free_port())]
        + ["--loop", "uvloop"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "pip install 'django-statemodes[uvloop]'" in result.stderr


def test_applications_are_freed_with_their_last_item_and_capped_by_max_applications() -> None:
    with StateServerProcess("--max-applications", "2", "--purge-interval", "0") as server:
        one, two, three = (client_for(server, application=name) for name in ("one", "two", "3"))
        assert one.set_and_release("k", b"v", lock_id=None, timeout=60, new_item=True)
        assert two.set_and_release("k", b"v", lock_id=None, timeout=60, new_item=True)
        assert three.get("k") is None  # a read opens nothing
        with pytest.raises(StateServerFull, match="--max-applications 2"):
            three.create_uninitialized("k", 60)
        assert three.set_and_release("k", b"v", lock_id=None, timeout=60) is False
        assert one.remove("k")  # "one" held its last item: freed
        assert set(one.stats()["applications"]) == {"two"}
        assert three.set_and_release("k", b"v", lock_id=None, timeout=60, new_item=True)
        assert one.get("k") is None
        assert three.get("k").data == b"v"  # type: ignore[union-attr]
        assert two.purge() == 1
        assert set(two.stats()["applications"]) == {"3"}
        assert one.stats()["bytes"] > 0


def test_client_timeouts_are_capped_by_max_timeout(tmp_path: Path) -> None:
    snapshot = tmp_path / "sessions.snap"
    with StateServerProcess("--max-timeout", "3600", "--snapshot", str(snapshot)) as server:
        client = client_for(server)
        assert client.set_and_release("long", b"v", lock_id=None, timeout=2**32 - 1, new_item=True)
        assert client.set_and_release("short", b"v", lock_id=None, timeout=60, new_item=True)
        assert client.stats()["max_timeout"] == 3600
    from django_statemodes.stateserver.snapshot import read_snapshot

    timeouts = {key: timeout for key, _, timeout, _ in read_snapshot(str(snapshot))["default"]}
    assert timeouts == {"long": 3600, "short": 60}


@pytest.mark.parametrize("flag", ["--max-timeout", "--max-applications"])
def test_zero_limits_are_refused_at_start(flag: str) -> None:
    result = _run_main("--port", str(free_port()), flag, "0")
    assert result.returncode == 2
    assert flag in result.stderr
