"""Several state servers: rendezvous hashing, a custom partition resolver, a partition down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from django_statemodes.exceptions import StateServerUnavailable
from django_statemodes.providers.stateserver import RendezvousResolver, StateServerProvider
from django_statemodes.stateserver.addresses import parse_address
from tests.fixtures_stateserver import StateServerProcess

pytestmark = [pytest.mark.stateserver]

KEYS = [f"partition-key-{index:04d}" for index in range(200)]


@pytest.fixture(scope="module")
def two_servers() -> Iterator[tuple[StateServerProcess, StateServerProcess]]:
    with StateServerProcess() as first, StateServerProcess() as second:
        yield first, second


class FirstServerResolver:
    """A custom resolver (STATEMODES_PARTITION_RESOLVER): every key on the first server."""

    connection = ""

    def resolve_partition(self, session_key: str) -> str:
        return self.connection

    def partitions(self) -> list[str]:
        return [self.connection]


def test_sessions_spread_over_every_server_and_each_is_found_again(
    two_servers: tuple[StateServerProcess, StateServerProcess],
) -> None:
    first, second = two_servers
    provider = StateServerProvider(connection=f"{first.connection};{second.connection}")
    try:
        for key in KEYS:
            assert provider.set_and_release(
                key, key.encode(), lock_id=None, timeout=60, new_item=True
            )
        for key in KEYS:
            assert provider.get(key).data == key.encode()  # type: ignore[union-attr]
        counts = [
            stats["applications"]["default"]["sessions"] for stats in provider.stats().values()
        ]
        assert sum(counts) >= len(KEYS)
        assert min(counts) > len(KEYS) // 4  # both servers hold a fair share
    finally:
        for key in KEYS:
            provider.remove(key)
        provider.close()


def test_adding_a_server_moves_only_the_keys_it_takes_over() -> None:
    two = RendezvousResolver("a:1;b:2")
    three = RendezvousResolver("a:1;b:2;c:3")
    moved = [key for key in KEYS if two.resolve(key) != three.resolve(key)]
    assert all(three.resolve(key) == parse_address("c:3") for key in moved)
    assert 0 < len(moved) < len(KEYS) * 0.6


def test_a_custom_resolver_chooses_the_server(
    two_servers: tuple[StateServerProcess, StateServerProcess],
) -> None:
    first, second = two_servers
    FirstServerResolver.connection = first.connection
    path = f"{__name__}.FirstServerResolver"
    provider = StateServerProvider(resolver=path)
    on_second = StateServerProvider(connection=second.connection)
    try:
        assert provider.set_and_release("resolved", b"v", lock_id=None, timeout=60, new_item=True)
        assert on_second.get("resolved") is None
        assert StateServerProvider(connection=first.connection).get("resolved") is not None
        assert provider.purge_expired() == 0
    finally:
        provider.remove("resolved")
        provider.close()
        on_second.close()


def test_a_partition_that_is_down_fails_only_its_own_sessions(
    two_servers: tuple[StateServerProcess, StateServerProcess],
) -> None:
    first, _ = two_servers
    down = StateServerProcess()  # a free port where nothing listens
    provider = StateServerProvider(connection=f"{first.connection};{down.connection}", timeout=2)
    resolver = provider.resolver
    assert isinstance(resolver, RendezvousResolver)
    up_key = next(k for k in KEYS if resolver.resolve(k) == parse_address(first.connection))
    down_key = next(k for k in KEYS if resolver.resolve(k) == parse_address(down.connection))
    try:
        assert provider.set_and_release(up_key, b"v", lock_id=None, timeout=60, new_item=True)
        with pytest.raises(StateServerUnavailable, match=str(down.port)):
            provider.get(down_key)
    finally:
        provider.remove(up_key)
        provider.close()
