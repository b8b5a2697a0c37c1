"""What the StateServer engine stores: Django's serializer's bytes, checked values, size limits,
compression.

The core writes Django's default JSONSerializer through pre-built coders (a speed-up); these
tests pin that the bytes on the server are exactly Django's, and that any other serializer is
still the one used. The first byte of every stored payload says how the rest is encoded (0x00
raw, 0x01 zlib), so STATEMODES_COMPRESSION can be switched either way without losing sessions.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.signing import JSONSerializer
from django.test import override_settings

from django_statemodes.backends.stateserver import SessionStore
from django_statemodes.core.codec import COMPRESS_MIN_LENGTH, RAW, ZLIB
from django_statemodes.exceptions import SessionTooLarge, SessionValueError
from django_statemodes.stateserver.addresses import Address
from django_statemodes.stateserver.client import StateServerClient
from tests.fixtures_stateserver import StateServerProcess

pytestmark = [pytest.mark.stateserver]

DATA: dict[str, Any] = {
    "text": 'héllo \U0001f600 \ud800 "quoted"\n',
    "number": 12.5,
    "big": 1 << 70,
    "nothing": None,
    "flags": [True, False],
    "nested": {"b": [1, {"c": "d"}], "a": -3},
}


class SortedJSONSerializer:
    """A SESSION_SERIALIZER other than Django's: sorted keys, spaces, a marker key."""

    def dumps(self, obj: Any) -> bytes:
        return json.dumps({**obj, "_by": "sorted"}, sort_keys=True).encode()

    def loads(self, data: bytes) -> Any:
        value = json.loads(data)
        value.pop("_by", None)
        return value


@pytest.fixture(scope="module")
def server() -> Iterator[StateServerProcess]:
    with StateServerProcess() as process:
        yield process


@pytest.fixture
def engine(server: StateServerProcess) -> Iterator[StateServerClient]:
    client = StateServerClient(Address("127.0.0.1", server.port), timeout=5)
    with override_settings(STATEMODES_STATE_CONNECTION=server.connection):
        yield client
    client.close()


def stored(client: StateServerClient, key: str) -> bytes:
    item = client.get(key)
    assert item is not None and item.data is not None
    return bytes(item.data)


def save(data: dict[str, Any]) -> str:
    session = SessionStore(access="ReadWrite")
    session.update(data)
    session.finish(save=True)
    assert session.session_key is not None
    return session.session_key


def load(key: str) -> dict[str, Any]:
    return dict(SessionStore(key, access="ReadOnly").items())


def test_the_stored_bytes_are_exactly_djangos_json_serializer(engine: StateServerClient) -> None:
    key = save(DATA)
    assert stored(engine, key) == RAW + JSONSerializer().dumps(DATA)
    assert dict(SessionStore(key, access="ReadOnly").items()) == DATA


def test_another_session_serializer_is_used_for_storing_and_loading(
    engine: StateServerClient,
) -> None:
    with override_settings(SESSION_SERIALIZER=f"{__name__}.SortedJSONSerializer"):
        key = save({"b": 1, "a": "x"})
        assert stored(engine, key) == RAW + b'{"_by": "sorted", "a": "x", "b": 1}'
        assert dict(SessionStore(key, access="ReadOnly").items()) == {"b": 1, "a": "x"}


def test_a_plain_value_over_the_size_limit_is_refused_where_it_is_set(
    engine: StateServerClient,
) -> None:
    with override_settings(STATEMODES_MAX_SESSION_SIZE=100):
        session = SessionStore(access="ReadWrite")
        session["short"] = "x" * 10
        with pytest.raises(SessionTooLarge, match="'long'"):
            session["long"] = "x" * 200
        assert "long" not in session


def test_values_json_cannot_hold_are_refused_where_they_are_set(
    engine: StateServerClient,
) -> None:
    session = SessionStore(access="ReadWrite")
    with pytest.raises(SessionValueError, match="'when'"):
        session["when"] = {1, 2}
    with pytest.raises(SessionValueError, match="int"):
        session["huge"] = 10**5000  # past sys.get_int_max_str_digits(): json.dumps refuses it
    with pytest.raises(SessionValueError, match="keys must be str"):
        session[("tuple", "key")] = "v"  # type: ignore[index]  # a plain value, a key JSON refuses
    assert dict(session.items()) == {}


# Well over COMPRESS_MIN_LENGTH and very compressible, as real sessions (JSON) are.
LARGE: dict[str, Any] = {
    "cart": [{"sku": f"SKU-{i:05d}", "name": "A fine item", "qty": 1} for i in range(500)],
    "note": "ab" * 5000,
}


@override_settings(STATEMODES_COMPRESSION=True)
def test_a_large_session_is_stored_zlib_compressed_and_read_back(
    engine: StateServerClient,
) -> None:
    key = save(LARGE)

    payload = stored(engine, key)
    serialized = JSONSerializer().dumps(LARGE)
    assert payload[:1] == ZLIB
    assert zlib.decompress(payload[1:]) == serialized
    assert len(payload) < len(serialized) / 10
    assert load(key) == LARGE


@override_settings(STATEMODES_COMPRESSION=True)
def test_a_session_below_the_threshold_stays_raw_with_compression_on(
    engine: StateServerClient,
) -> None:
    small = {"user": "42"}
    assert len(JSONSerializer().dumps(small)) < COMPRESS_MIN_LENGTH
    key = save(small)
    assert stored(engine, key) == RAW + JSONSerializer().dumps(small)
    assert load(key) == small


def test_a_large_session_is_stored_raw_with_compression_off(engine: StateServerClient) -> None:
    key = save(LARGE)
    assert stored(engine, key) == RAW + JSONSerializer().dumps(LARGE)


@pytest.mark.parametrize(("before", "after"), [(False, True), (True, False)])
def test_sessions_stay_readable_when_compression_is_switched(
    engine: StateServerClient, before: bool, after: bool
) -> None:
    with override_settings(STATEMODES_COMPRESSION=before):
        key = save(LARGE)
    assert stored(engine, key)[:1] == (ZLIB if before else RAW)

    with override_settings(STATEMODES_COMPRESSION=after):
        assert load(key) == LARGE
        # The next write of that session uses the new encoding, and still reads back.
        session = SessionStore(key, access="ReadWrite")
        session["visits"] = 1
        session.finish(save=True)
        assert stored(engine, key)[:1] == (ZLIB if after else RAW)
        assert load(key) == {**LARGE, "visits": 1}


# The size limit applies to the serialized size, before compression: compression keeps the
# store small, not what every process inflates and parses on each load (issue 14).
MB = 1024 * 1024


@override_settings(STATEMODES_COMPRESSION=True, STATEMODES_MAX_SESSION_SIZE=MB)
def test_a_value_grown_in_place_past_the_limit_is_refused_with_compression_on(
    engine: StateServerClient,
) -> None:
    session = SessionStore(access="ReadWrite")
    session["cart"] = []
    session["cart"].append("x" * (3 * MB))  # grown after it was set: only the save sees it
    session.modified = True
    with pytest.raises(SessionTooLarge, match="'cart'"):
        session.save()


@override_settings(STATEMODES_COMPRESSION=True, STATEMODES_MAX_SESSION_SIZE=MB)
def test_values_that_fit_alone_but_not_together_are_refused_with_compression_on(
    engine: StateServerClient,
) -> None:
    session = SessionStore(access="ReadWrite")
    for name in ("a", "b", "c"):
        session[name] = name * (MB // 3)  # each fits; together about 1 MB of JSON + keys
    session["tiny"] = 1
    with pytest.raises(SessionTooLarge, match="STATEMODES_MAX_SESSION_SIZE") as caught:
        session.save()
    assert "'a'" in str(caught.value) and "'tiny'" not in str(caught.value)
