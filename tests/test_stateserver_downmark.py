"""A state server that stops answering is marked down: its sessions get 503 at once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest

from django_statemodes.exceptions import StateServerUnavailable
from django_statemodes.providers.stateserver import StateServerProvider
from django_statemodes.stateserver.addresses import parse_address
from django_statemodes.stateserver.client import StateServerClient
from tests.farm import Browser, WebServer
from tests.fixtures_stateserver import StateServerProcess

pytestmark = [pytest.mark.stateserver, pytest.mark.slow]

# Long enough that a request that waited for it stands out from one refused at once.
NETWORK_TIMEOUT = 6.0
DOWN_INTERVAL = 2.0
KEYS = [f"down-key-{index:03d}" for index in range(200)]


@pytest.fixture
def farm() -> Iterator[tuple[StateServerProcess, StateServerProcess]]:
    with StateServerProcess() as up, StateServerProcess() as hung:
        yield up, hung


def operations(server: StateServerProcess) -> int:
    provider = StateServerProvider(connection=server.connection)
    try:
        count: int = provider.client("any").stats()["operations"]
        return count
    finally:
        provider.close()


def test_a_hung_server_is_marked_down_then_probed_back(
    farm: tuple[StateServerProcess, StateServerProcess],
) -> None:
    up, hung = farm
    provider = StateServerProvider(
        connection=f"{up.connection};{hung.connection}",
        timeout=NETWORK_TIMEOUT,
        down_interval=DOWN_INTERVAL,
    )
    on_up = [k for k in KEYS if provider.resolver.resolve(k).port == up.port][:20]
    on_hung = [k for k in KEYS if provider.resolver.resolve(k).port == hung.port][:21]
    for key in on_up + on_hung:
        assert provider.set_and_release(key, b"v", lock_id=None, timeout=600, new_item=True)
    before = operations(hung)
    hung.signal(signal.SIGSTOP)  # alive, connected, never answering
    try:
        with pytest.raises(StateServerUnavailable, match="no answer within"):
            provider.get_exclusive(on_hung[0])  # the first request waits the network timeout
        assert provider.marked_down == 1
        assert list(provider.down_servers()) == [f"127.0.0.1:{hung.port}"]
        for index, key in enumerate(on_hung[1:]):
            with pytest.raises(StateServerUnavailable, match="marked down"):
                provider.get_exclusive(key)
            # The other server's sessions are served all along.
            item = provider.get_exclusive(on_up[index])
            assert item is not None and item.data == b"v"
            provider.release(on_up[index], item.lock_id)
        # Not one of the twenty waited for the timeout: each was refused by the mark ("marked
        # down", not "no answer within"), counted as such.
        assert provider.refused_down == 20
    finally:
        hung.signal(signal.SIGCONT)
    # The twenty never reached the server: it counted the one request that timed out (read once
    # it runs again) and one STATS, nothing more.
    assert operations(hung) - before <= 2
    # Still marked until the interval ends; then one request probes (PING) and is served.
    left = provider.down_servers().get(f"127.0.0.1:{hung.port}", 0.0)
    time.sleep(left + 0.05)
    item = provider.get_exclusive(on_hung[1])
    assert item is not None and item.data == b"v"
    provider.release(on_hung[1], item.lock_id)
    assert provider.down_servers() == {}
    assert provider.marked_down == 1
    provider.close()


def test_a_refused_connection_marks_nothing(
    farm: tuple[StateServerProcess, StateServerProcess],
) -> None:
    up, gone = farm
    provider = StateServerProvider(
        connection=f"{up.connection};{gone.connection}", down_interval=DOWN_INTERVAL
    )
    key = next(k for k in KEYS if provider.resolver.resolve(k).port == gone.port)
    assert provider.set_and_release(key, b"v", lock_id=None, timeout=600, new_item=True)
    gone.kill()
    for _ in range(3):
        with pytest.raises(StateServerUnavailable, match="cannot connect"):
            provider.get(key)  # fails at once by itself: nothing to gain from a mark
    assert provider.marked_down == 0
    gone.start()  # back (empty) at once: used again at once
    assert provider.get(key) is None
    provider.close()


def test_the_async_path_is_refused_while_down_too(
    farm: tuple[StateServerProcess, StateServerProcess],
) -> None:
    up, hung = farm
    provider = StateServerProvider(
        connection=f"{up.connection};{hung.connection}", timeout=1.0, down_interval=30.0
    )
    key = next(k for k in KEYS if provider.resolver.resolve(k).port == hung.port)
    hung.signal(signal.SIGSTOP)
    try:

        async def requests() -> list[str]:
            messages = []
            for _ in range(3):
                try:
                    await provider.aget_exclusive(key)
                except StateServerUnavailable as exc:
                    messages.append(str(exc))
            return messages

        messages = asyncio.run(requests())
    finally:
        hung.signal(signal.SIGCONT)
    assert len(messages) == 3
    assert "marked down" not in messages[0]  # the first one waited (a connection's handshake)
    assert all("marked down" in message for message in messages[1:])
    assert provider.marked_down == 1 and provider.refused_down == 2
    provider.close()


def test_through_gunicorn_a_hung_servers_sessions_get_503_and_retry_after_at_once(
    farm: tuple[StateServerProcess, StateServerProcess],
) -> None:
    up, hung = farm
    connection = f"{up.connection};{hung.connection}"
    with WebServer(
        connection,
        threads=4,
        FARM_NETWORK_TIMEOUT=str(NETWORK_TIMEOUT),
        FARM_DOWN_INTERVAL="60",
    ) as web:
        logged = web.log.stat().st_size
        users = [Browser(web.port) for _ in range(16)]
        for user in users:
            assert user.counter() == 1
        client = StateServerClient(parse_address(hung.connection), application="farm")
        on_hung = [user for user in users if client.get(str(user.cookie)) is not None]
        on_up = [user for user in users if user not in on_hung]
        assert on_hung and on_up
        before = client.stats()["operations"]
        hung.signal(signal.SIGSTOP)
        try:
            status, _ = on_hung[0].get("/incr")
            assert status == 503  # after the network timeout
            for index in range(20):
                status, body = on_hung[index % len(on_hung)].get("/incr")
                assert status == 503, body
                assert "Retry-After" in on_hung[index % len(on_hung)].headers
                user = on_up[index % len(on_up)]
                assert user.counter("/count") >= 1  # the other server's sessions are served
        finally:
            hung.signal(signal.SIGCONT)
        assert client.stats()["operations"] - before <= 2  # the twenty never reached it
        log = web.log.read_bytes()[logged:].decode()
        assert log.count("Marked the state server at") == 1
        # None of the twenty waited for the timeout: each was refused by the mark.
        refusals = [line for line in log.splitlines() if "Session store unavailable" in line]
        assert sum("marked down" in line for line in refusals) >= 20, refusals[-3:]
        client.close()
