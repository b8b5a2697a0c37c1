"""The blocking and asyncio clients against a real server: wake-ups, reconnects, failures, parity."""

from __future__ import annotations

import asyncio
import inspect
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import pytest

from django_statemodes.exceptions import StateServerError, StateServerUnavailable
from django_statemodes.items import ExpiredItem, StateItem
from django_statemodes.stateserver import protocol as p
from django_statemodes.stateserver.addresses import Address
from django_statemodes.stateserver.client import AsyncStateServerClient, StateServerClient
from tests.fixtures_stateserver import StateServerProcess
from tests.test_stateserver_handshake import _Listener

pytestmark = [pytest.mark.stateserver]


def address(server: StateServerProcess) -> Address:
    return Address("127.0.0.1", server.port)


def test_the_async_wait_wakes_at_the_release_not_at_its_timeout(
    stateserver: StateServerProcess,
) -> None:
    holder = StateServerClient(address(stateserver), timeout=5)
    holder.set_and_release("async-wait", b"v", lock_id=None, timeout=60, new_item=True)
    item = holder.get_exclusive("async-wait")
    assert item is not None
    timer = threading.Timer(0.3, holder.release, ("async-wait", item.lock_id))

    async def wait() -> tuple[bool, float]:
        client = AsyncStateServerClient(address(stateserver), timeout=5)
        try:
            started = time.monotonic()
            released = await client.wait("async-wait", item.lock_id, 600)
            return released, time.monotonic() - started
        finally:
            await client.aclose()

    timer.start()
    released, elapsed = asyncio.run(wait())
    assert released is True
    assert 0.2 < elapsed < 60  # woken by the release, long before the 600 s timeout


def test_async_operations_pipeline_over_one_connection() -> None:
    with StateServerProcess() as server:  # its own: other tests' connections close late
        observer = StateServerClient(address(server), timeout=5)
        assert observer.stats()["connections"] == 1
        assert asyncio.run(pipelined(server, observer)) == [
            f"pipelined-{i}".encode() for i in range(50)
        ]


async def pipelined(server: StateServerProcess, observer: StateServerClient) -> list[bytes | None]:
    client = AsyncStateServerClient(address(server), timeout=5)
    try:
        keys = [f"pipelined-{i}" for i in range(50)]
        # Fifty calls on a client not yet connected: they all wait for one connect.
        await asyncio.gather(
            *(
                client.set_and_release(k, k.encode(), lock_id=None, timeout=60, new_item=True)
                for k in keys
            )
        )
        items = await asyncio.gather(*(client.get(k) for k in keys))
        assert observer.stats()["connections"] == 2  # the observer and this one
        return [item.data if item else None for item in items]
    finally:
        await client.aclose()


def test_a_caller_cancelled_while_the_link_connects_leaves_the_others_served(
    stateserver: StateServerProcess,
) -> None:
    # The connect is shared by the calls that wait for it: cancelling one of them (a client
    # gone under ASGI) must not cancel it for the rest.
    async def scenario() -> list[Any]:
        client = AsyncStateServerClient(address(stateserver), timeout=5)
        try:
            calls = [asyncio.ensure_future(client.ping(b"%d" % i)) for i in range(3)]
            await asyncio.sleep(0)  # each call is now waiting for the one connect
            assert len(client._connecting) == 1
            calls[0].cancel()
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.aclose()

    first, *others = asyncio.run(scenario())
    assert isinstance(first, asyncio.CancelledError)
    assert others == [b"1", b"2"]


def test_calls_that_share_a_failed_connect_each_get_the_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens on it

    async def scenario() -> list[Any]:
        client = AsyncStateServerClient(Address("127.0.0.1", port), timeout=2)
        try:
            return await asyncio.gather(*(client.ping() for _ in range(5)), return_exceptions=True)
        finally:
            await client.aclose()

    failures = asyncio.run(scenario())
    assert len(failures) == 5
    assert all(isinstance(failure, StateServerUnavailable) for failure in failures), failures


def test_both_clients_reconnect_by_themselves_after_a_server_restart() -> None:
    with StateServerProcess() as server:
        blocking = StateServerClient(address(server), timeout=2)
        assert blocking.ping(b"1") == b"1"

        async def ping_twice() -> list[bytes]:
            client = AsyncStateServerClient(address(server), timeout=2)
            try:
                first = await client.call(lambda rid: p.Ping(rid, b"a"))
                assert isinstance(first, p.Pong)
                await asyncio.to_thread(server.restart)
                second = await client.get("nothing-here")
                return [first.payload, b"none" if second is None else b"found"]
            finally:
                await client.aclose()

        assert asyncio.run(ping_twice()) == [b"a", b"none"]
        assert blocking.ping(b"2") == b"2"  # the kept connection was dead: one reconnect


def test_a_dead_server_raises_unavailable_naming_the_address_and_setting() -> None:
    server = StateServerProcess()  # never started: nothing listens on its port
    client = StateServerClient(address(server), timeout=600)
    started = time.monotonic()
    with pytest.raises(StateServerUnavailable) as info:
        client.get("anything")
    assert time.monotonic() - started < 60  # refused at once, not after the 600 s timeout
    message = str(info.value)
    assert f"127.0.0.1:{server.port}" in message
    assert "STATEMODES_STATE_CONNECTION" in message
    assert info.value.setting == "STATEMODES_STATE_CONNECTION"

    async def async_get() -> None:
        await AsyncStateServerClient(address(server), timeout=2).get("anything")

    with pytest.raises(StateServerUnavailable, match=str(server.port)):
        asyncio.run(async_get())


def test_links_of_finished_event_loops_are_dropped(stateserver: StateServerProcess) -> None:
    client = AsyncStateServerClient(address(stateserver), timeout=5)
    for _ in range(5):
        asyncio.run(client.get("loop-sweep"))
    assert len(client._links) == 1  # only the last loop's link is left


def test_a_wait_may_outlast_the_network_timeout_which_then_applies_again() -> None:
    with StateServerProcess() as server:
        holder = StateServerClient(address(server), timeout=5)
        holder.set_and_release("long-wait", b"v", lock_id=None, timeout=60, new_item=True)
        item = holder.get_exclusive("long-wait")
        assert item is not None
        client = StateServerClient(address(server), timeout=0.5)
        started = time.monotonic()
        assert client.wait("long-wait", item.lock_id, 1.2) is False  # the server's own timeout
        assert time.monotonic() - started > 1.1  # it waited the server's 1.2 s
        assert client.ping(b"still usable") == b"still usable"
        # The same connection, to a server that no longer answers: 0.5 s is in force again.
        server.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StateServerUnavailable, match=r"no answer within 0.5 s"):
                client.ping()
        finally:
            server.signal(signal.SIGCONT)


# Parity: the two clients share every request and reply check (stateserver/operations.py); these
# tests hold them to it from the outside, against one real server.

Step = tuple[str, tuple[Any, ...], dict[str, Any]]
Outcome = tuple[str, Any]


def step(name: str, *args: Any, **kwargs: Any) -> Step:
    return name, args, kwargs


def scenario(expired: list[ExpiredItem]) -> Generator[Step, Any, None]:
    """Every operation, in the cases the provider contract distinguishes.

    Yields client calls (names starting with ``_`` are the runner's: sleep, release from another
    connection, record a value) and receives their results, or the exception a call raised.
    """
    yield step("get", "s1")  # not found
    yield step("get_exclusive", "s1")
    yield step("remove", "s1")
    yield step("set_and_release", "s1", b"one", lock_id=None, timeout=60, new_item=True)
    yield step("set_and_release", "s1", b"two", lock_id=None, timeout=60, new_item=True)  # taken
    yield step("get", "s1")
    locked = yield step("get_exclusive", "s1")
    yield step("get_exclusive", "s1")  # locked: reported with its lock id, no data
    yield step("set_and_release", "s1", b"x", lock_id=locked.lock_id + 1, timeout=60)  # refused
    yield step("set_and_release", "s1", b"three", lock_id=locked.lock_id, timeout=60, release=False)
    yield step("get", "s1")  # written, still locked
    yield step("wait", "s1", locked.lock_id, 0.2)  # times out: still held
    yield step("release", "s1", locked.lock_id)
    yield step("wait", "s1", locked.lock_id, 30)  # at once: no longer held
    yield step("reset_timeout", "s1")
    yield step("reset_timeout", "missing")
    yield step("create_uninitialized", "s2", 60)
    yield step("create_uninitialized", "s2", 60)  # exists
    placeholder = yield step("get_exclusive", "s2")  # initialize, once
    yield step("remove", "s2", placeholder.lock_id + 1)  # another lock's
    yield step("remove", "s2", placeholder.lock_id)
    yield step("set_and_release", "big", b"b" * 100_000, lock_id=None, timeout=60, new_item=True)
    # A wait woken by another connection's release, long before its timeout.
    yield step("set_and_release", "s3", b"v", lock_id=None, timeout=60, new_item=True)
    held = yield step("get_exclusive", "s3")
    yield step("_release_later", "s3", held.lock_id, 0.3)
    started = time.monotonic()
    yield step("wait", "s3", held.lock_id, 30)
    yield step("_woken_early", time.monotonic() - started < 10)
    yield step("ping", b"payload")
    yield step("ping")
    yield step("set_and_release", "e1", b"gone", lock_id=None, timeout=1, new_item=True)
    yield step("create_uninitialized", "e2", 1)
    yield step("_sleep", 1.2)
    yield step("purge_expired", dry_run=True)  # counted, kept
    yield step("purge_expired", on_expired=expired.append)
    yield step("purge_expired")  # nothing left
    yield step("stats")
    yield step("purge")  # s1 and s3
    yield step("get", "s1")


def outcome(result: Any) -> Any:
    """What a result says, without what differs between two runs (times, server counters)."""
    if isinstance(result, StateItem):
        return result._replace(lock_age=round(result.lock_age))
    if isinstance(result, BaseException):
        # The bytes in use count connections' buffers too, which timing changes under load.
        return type(result).__name__, re.sub(r"\(\d+ in use", "(N in use", str(result))
    if isinstance(result, dict):
        return sorted(result)  # stats: the keys
    return result


def release_later(server: StateServerProcess, application: str, *args: Any) -> None:
    """Release a lock from another connection after a delay, as another request would."""
    key, lock_id, delay = args

    def release() -> None:
        holder = StateServerClient(address(server), timeout=5, application=application)
        holder.release(key, lock_id)
        holder.close()

    threading.Timer(delay, release).start()


def run_blocking(server: StateServerProcess, application: str) -> list[Outcome]:
    client = StateServerClient(address(server), timeout=5, application=application)
    expired: list[ExpiredItem] = []
    steps, transcript = scenario(expired), []
    result: Any = None
    try:
        while True:
            name, args, kwargs = steps.send(result)
            if name == "_sleep":
                time.sleep(*args)
                result = None
            elif name == "_release_later":
                release_later(server, application, *args)
                result = None
            elif name.startswith("_"):
                result = args
            else:
                try:
                    result = getattr(client, name)(*args, **kwargs)
                except StateServerError as exc:
                    result = exc
            transcript.append((name, outcome(result)))
    except StopIteration:
        pass
    finally:
        client.close()
    return [*transcript, ("expired", expired)]


def run_async(server: StateServerProcess, application: str) -> list[Outcome]:
    async def run() -> list[Outcome]:
        client = AsyncStateServerClient(address(server), timeout=5, application=application)
        expired: list[ExpiredItem] = []
        steps, transcript = scenario(expired), []
        result: Any = None
        try:
            while True:
                name, args, kwargs = steps.send(result)
                if name == "_sleep":
                    await asyncio.sleep(*args)
                    result = None
                elif name == "_release_later":
                    release_later(server, application, *args)
                    result = None
                elif name.startswith("_"):
                    result = args
                else:
                    try:
                        result = await getattr(client, name)(*args, **kwargs)
                    except StateServerError as exc:
                        result = exc
                transcript.append((name, outcome(result)))
        except StopIteration:
            pass
        finally:
            await client.aclose()
        return [*transcript, ("expired", expired)]

    return asyncio.run(run())


def test_both_clients_give_equal_results_for_the_same_calls() -> None:
    with StateServerProcess("--max-memory", "65536", "--purge-interval", "0") as server:
        blocking = run_blocking(server, "parity")
        # The same application again, emptied by the scenario's purge: same lock ids too.
        asynchronous = run_async(server, "parity")

    steps = [name for name, _ in blocking]
    assert steps == [name for name, _ in asynchronous]
    for index, (ours, theirs) in enumerate(zip(blocking, asynchronous, strict=True)):
        assert ours == theirs, f"step {index} ({steps[index]}) differs"
    # The scenario reaches every case it names (the blocking client's answers).
    results = [result for _, result in blocking]
    assert results[:5] == [None, None, False, True, False]  # not found x3, stored, collision
    assert results[5].data == b"one" and not results[5].locked
    assert results[6].data == b"one" and not results[6].locked  # the lock, taken
    assert results[7].locked and results[7].data is None  # locked by someone
    assert results[8:10] == [False, True]  # a refused write; a write keeping the lock
    assert results[10].data == b"three" and results[10].locked
    assert results[11:14] == [False, None, True]  # wait timed out; released; at once
    assert results[16:18] == [True, False]
    assert results[18].initialize and results[19:21] == [False, True]
    assert results[21][0] == "StateServerFull"
    assert results[25:27] == [True, (True,)]  # woken by the release, not the timeout
    assert results[27:29] == [b"payload", b""]
    assert results[32:35] == [2, 2, 0]  # dry run, purge, nothing left
    assert "sessions" in results[35]
    assert results[36:] == [2, None, [ExpiredItem("e1", b"gone"), ExpiredItem("e2", None)]]


def test_both_clients_have_the_same_operations() -> None:
    def operations(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(method)
            for name, method in vars(cls).items()
            if not name.startswith("_") and callable(method) and name not in ("close", "aclose")
        }

    blocking, asynchronous = operations(StateServerClient), operations(AsyncStateServerClient)
    assert blocking == asynchronous
    assert {"get", "get_exclusive", "set_and_release", "release", "remove", "reset_timeout"} | {
        "create_uninitialized",
        "purge_expired",
        "wait",
        "ping",
        "stats",
        "purge",
        "run",
        "call",
    } <= set(blocking)
    assert all(inspect.iscoroutinefunction(getattr(AsyncStateServerClient, n)) for n in blocking)


def test_both_clients_read_expired_items_sent_in_several_batches() -> None:
    # Over 1 MiB of expired data: the server answers PURGE_EXPIRED with several EXPIRED frames.
    data = {f"x{i}": bytes([i]) * 600_000 for i in range(4)}

    def store(application: str) -> None:
        client = StateServerClient(address(server), timeout=5, application=application)
        for key, value in data.items():
            client.set_and_release(key, value, lock_id=None, timeout=1, new_item=True)

    async def purge_async(application: str) -> tuple[int, list[ExpiredItem]]:
        client = AsyncStateServerClient(address(server), timeout=5, application=application)
        expired: list[ExpiredItem] = []
        try:
            count = await client.purge_expired(on_expired=expired.append)
            assert await client.ping(b"after") == b"after"  # the link is still in step
            return count, expired
        finally:
            await client.aclose()

    with StateServerProcess("--purge-interval", "0") as server:
        store("batches-blocking")
        store("batches-async")
        time.sleep(1.2)
        client = StateServerClient(address(server), timeout=5, application="batches-blocking")
        expired: list[ExpiredItem] = []
        blocking = client.purge_expired(on_expired=expired.append), expired
        assert client.ping(b"after") == b"after"
        asynchronous = asyncio.run(purge_async("batches-async"))

    expected = [ExpiredItem(key, value) for key, value in data.items()]  # in expiry order
    assert blocking == (4, expected)
    assert asynchronous == (4, expected)


# Parity under faults: a scripted peer (a real TCP server speaking protocol.py's frames) says what
# the real server says only when something is wrong.

Script = Callable[[int, p.Request], list[p.Event | None]]
ADDRESS = "<peer>"  # each client has a peer of its own: its address is left out


class ScriptedPeer(_Listener):
    """Completes the handshake, then answers request number ``n`` of connection ``c`` with
    ``script(c, request)``: frames to send, ``None`` for closing the connection there."""

    def __init__(self, script: Script) -> None:
        super().__init__()
        self.script = script
        self.connections = 0

    def serve(self, sock: socket.socket) -> None:
        # Counted at the handshake, not at accept(): the port is an ephemeral one, which a
        # client of an earlier test's stopped server (a Redis subscriber reconnecting, say) may
        # still be dialling.
        connection = 0
        conn = p.Connection(p.SERVER)
        try:
            sock.sendall(conn.send(p.Welcome()))
            while True:
                event = conn.next_event()
                if event is p.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                    continue
                if event is p.CLOSED:
                    return
                if isinstance(event, p.Hello):
                    self.connections += 1
                    connection = self.connections
                    sock.sendall(conn.send(p.Ready()))
                    continue
                assert isinstance(event, p.Request)
                for answer in self.script(connection, event):
                    if answer is None:
                        return
                    sock.sendall(conn.send(answer))
        except (OSError, p.ProtocolError):
            pass


def blocking_calls(peer: ScriptedPeer, calls: list[Step], timeout: float = 5) -> list[Any]:
    client = StateServerClient(peer.address, timeout=timeout)
    results: list[Any] = []
    for name, args, kwargs in calls:
        try:
            results.append(getattr(client, name)(*args, **kwargs))
        except StateServerError as exc:
            results.append(exc)
    client.close()
    return scrubbed(results, peer)


def async_calls(peer: ScriptedPeer, calls: list[Step], timeout: float = 5) -> list[Any]:
    async def run() -> list[Any]:
        client = AsyncStateServerClient(peer.address, timeout=timeout)
        results: list[Any] = []
        for name, args, kwargs in calls:
            try:
                results.append(await getattr(client, name)(*args, **kwargs))
            except StateServerError as exc:
                results.append(exc)
        await client.aclose()
        return scrubbed(results, peer)

    return asyncio.run(run())


def scrubbed(results: list[Any], peer: ScriptedPeer) -> list[Any]:
    """``outcome`` of each result, the peer's address in messages replaced by ``ADDRESS``."""
    outcomes = []
    for result in results:
        if isinstance(result, BaseException):
            outcomes.append(
                (type(result).__name__, str(result).replace(str(peer.address), ADDRESS))
            )
        else:
            outcomes.append(outcome(result))
    return outcomes


def both(script: Script, calls: list[Step], timeout: float = 5) -> tuple[list[Any], list[int]]:
    """Run ``calls`` through each client against its own ``script``ed peer: the results (equal
    for both) and how many connections each client opened."""
    outcomes, connections = [], []
    for run in (blocking_calls, async_calls):
        with ScriptedPeer(script) as peer:
            outcomes.append(run(peer, calls, timeout))
        connections.append(peer.connections)
    assert outcomes[0] == outcomes[1]
    return outcomes[0], connections


def pong(connection: int, request: p.Request) -> list[p.Event | None]:
    assert isinstance(request, p.Ping)
    return [p.Pong(request.request_id, request.payload)]


def test_a_connection_error_is_raised_by_both_clients_without_a_retry() -> None:
    def refuse(connection: int, request: p.Request) -> list[p.Event | None]:
        return [p.Error(0, p.ErrorCode.UNKNOWN_TYPE, "what is this"), None]

    results, connections = both(refuse, [step("ping", b"a")])
    assert results == [
        (
            "StateServerProtocolError",
            f"The state server at {ADDRESS} answered error 7: what is this",
        )
    ]
    assert connections == [1, 1]  # a fresh connection would be refused the same way


def test_a_shutting_down_server_is_retried_once_on_a_fresh_connection() -> None:
    def shut_down_once(connection: int, request: p.Request) -> list[p.Event | None]:
        if connection == 1 and request.request_id == 2:
            return [p.Error(0, p.ErrorCode.SHUTTING_DOWN, "restarting"), None]
        return pong(connection, request)

    results, connections = both(shut_down_once, [step("ping", b"a"), step("ping", b"b")])
    assert results == [b"a", b"b"]
    assert connections == [2, 2]


def test_a_reply_to_another_request_is_a_protocol_error_for_both_clients() -> None:
    def misnumbered(connection: int, request: p.Request) -> list[p.Event | None]:
        return [p.Pong(request.request_id + 100, b"?")]

    results, _ = both(misnumbered, [step("ping", b"a")])
    assert results == [("StateServerProtocolError", f"{ADDRESS} answered another request")]


def test_an_unanswered_request_times_out_alike_in_both_clients() -> None:
    def silent(connection: int, request: p.Request) -> list[p.Event | None]:
        return []

    results, _ = both(silent, [step("ping", b"a")], timeout=0.3)
    message = (
        f"Unable to make the session state request to the state server at {ADDRESS}: no answer "
        "within 0.3 s (STATEMODES_STATE_NETWORK_TIMEOUT)"
    )
    assert results[0][0] == "StateServerUnavailable"
    assert results[0][1].startswith(message)


def test_an_error_in_the_middle_of_a_reply_in_parts_is_raised_alike() -> None:
    def fail_midway(connection: int, request: p.Request) -> list[p.Event | None]:
        batch = p.ExpiredBatch(request.request_id, (("k1", b"1"),))
        return [batch, p.Error(request.request_id, p.ErrorCode.INTERNAL, "disk on fire")]

    seen: list[ExpiredItem] = []
    results, _ = both(fail_midway, [step("purge_expired", on_expired=seen.append)])
    assert results == [
        (
            "StateServerProtocolError",
            f"The state server at {ADDRESS} answered error 10: disk on fire",
        )
    ]
    assert seen == [ExpiredItem("k1", b"1")] * 2  # each client read the first part


def test_a_connection_lost_in_the_middle_of_a_reply_in_parts_is_not_retried() -> None:
    def close_midway(connection: int, request: p.Request) -> list[p.Event | None]:
        return [p.ExpiredBatch(request.request_id, (("k1", None),)), None]

    seen: list[ExpiredItem] = []
    results, connections = both(close_midway, [step("purge_expired", on_expired=seen.append)])
    assert results[0][0] == "StateServerUnavailable"
    assert "connection lost" in results[0][1]
    assert seen == [ExpiredItem("k1", None)] * 2
    assert connections == [1, 1]  # the batches read were consumed: no second PURGE_EXPIRED


def test_a_late_reply_to_a_cancelled_async_request_leaves_the_connection_usable() -> None:
    def slow_refusal(connection: int, request: p.Request) -> list[p.Event | None]:
        assert isinstance(request, p.Ping)
        if request.payload == b"slow":
            time.sleep(0.3)  # answered after the caller gave up
            return [p.Error(request.request_id, p.ErrorCode.STORE_FULL, "full")]
        return pong(connection, request)

    async def scenario(peer: ScriptedPeer) -> bytes:
        client = AsyncStateServerClient(peer.address, timeout=5)
        try:
            slow = asyncio.create_task(client.ping(b"slow"))
            await asyncio.sleep(0.05)
            slow.cancel()
            return await client.ping(b"fast")  # pipelined behind the cancelled request
        finally:
            await client.aclose()

    with ScriptedPeer(slow_refusal) as peer:
        assert asyncio.run(scenario(peer)) == b"fast"
    assert peer.connections == 1  # the refusal of the cancelled request broke nothing
