"""Several state servers: rendezvous hashing, a custom partition resolver, a partition down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from django_statemodes.exceptions import StateServerUnavailable
from django_statemodes.providers.stateserver import RendezvousResolver, StateServerProvider
from django_statemodes.stateserver.addresses import parse_address, placement
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


# Placement: every web server places a key on the same server, however it spells the address.

PLACEMENT_KEYS = [f"placement-key-{index:05d}" for index in range(1000)]


def _placements(connection: str) -> list[str]:
    resolver = RendezvousResolver(connection)
    return [placement(resolver.resolve(key)) for key in PLACEMENT_KEYS]


def test_localhost_and_the_loopback_ip_place_every_key_on_the_same_server() -> None:
    one = _placements("tcpip=localhost:4001;tcpip=127.0.0.1:4002;tcpip=127.0.0.1:4003")
    other = _placements("127.0.0.1:4001;LOCALHOST.:4002;tcpip=localhost:4003")
    assert one == other
    assert len(set(one)) == 3  # the keys spread over all three


def test_hostnames_ports_and_ipv6_literals_are_normalised() -> None:
    assert _placements("State-A.example:42424;[::1]:7") == _placements(
        "tcpip=state-a.example;[0:0::1]:7"
    )
    assert placement(parse_address("tls=[::FFFF:7f00:1]:9")) == "[::ffff:7f00:1]:9"


def test_named_servers_place_keys_by_name_whatever_their_addresses() -> None:
    one = _placements("tcpip=10.0.0.5:42424#s1;tcpip=10.0.0.6:42424#s2;tcpip=10.0.0.7#s3")
    other = _placements("state-a:1#s1;state-b:2#s2;tcpip=state-c:3#s3")
    assert one == other
    assert set(one) == {"s1", "s2", "s3"}
    assert parse_address("tcpip=10.0.0.5:42424#s1") == ("10.0.0.5", 42424, False, "s1")


@pytest.mark.parametrize("text", ["127.0.0.1:1#", "127.0.0.1:1# x", "127.0.0.1:1#\x00"])
def test_an_empty_or_unprintable_server_id_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="server id"):
        parse_address(text)


def test_an_ipv4_mapped_address_places_keys_alike_on_every_python() -> None:
    # Python 3.13's ipaddress writes these as ::ffff:127.0.0.1, earlier versions as
    # ::ffff:7f00:1: web servers on both must agree, whichever spelling they are given.
    spellings = ["[::ffff:7f00:1]:9", "[::FFFF:127.0.0.1]:9", "[0:0:0:0:0:ffff:7f00:1]:9"]
    assert {placement(parse_address(text)) for text in spellings} == {"[::ffff:7f00:1]:9"}
    assert placement(parse_address("[::ffff:0:1]:9")) == "[::ffff:0:1]:9"
