"""``FastJSONSerializer``: orjson's speed, Django's JSON: either serializer reads the other's
sessions, so switching ``SESSION_SERIALIZER`` either way loses nothing."""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any

import pytest
from django.core.signing import JSONSerializer
from django.test import override_settings
from django.utils.safestring import mark_safe

from django_statemodes.backends.stateserver import SessionStore
from django_statemodes.core.codec import RAW
from django_statemodes.exceptions import SessionValueError
from django_statemodes.serializers import FastJSONSerializer
from tests.fixtures_stateserver import StateServerProcess, client_for
from tests.test_stateserver_payloads import load, save

FAST = "django_statemodes.serializers.FastJSONSerializer"
DJANGO = "django.core.signing.JSONSerializer"

# Data both serializers write byte for byte alike (no floats whose text differs, such as 1e16).
PLAIN: dict[str, Any] = {
    "text": 'héllo \U0001f600 日本 "quoted"\n\\ \x00 \u2028',
    "number": 12.5,
    "int": -(1 << 62),
    "nothing": None,
    "flags": [True, False],
    "nested": {"b": [1, {"c": "d"}], "a": -3, "": []},
    "safe": mark_safe("<b>str subclass</b>"),
}
# Data orjson refuses or would read back differently, which goes through json both ways.
AWKWARD: list[dict[Any, Any]] = [
    {"big": 1 << 70},
    {"negative": -(10**19)},
    {"digits": "1" * 40},
    {1: "int key", None: "null key"},
    {"lone surrogate": "\ud800"},
]


def test_plain_data_is_written_byte_for_byte_as_djangos_serializer_writes_it() -> None:
    assert FastJSONSerializer().dumps(PLAIN) == JSONSerializer().dumps(PLAIN)
    assert FastJSONSerializer().dumps(PLAIN).isascii()


@pytest.mark.parametrize("data", [PLAIN, *AWKWARD], ids=lambda d: str(list(d)[0]))
def test_each_serializer_reads_what_the_other_wrote(data: dict[Any, Any]) -> None:
    fast, django = FastJSONSerializer(), JSONSerializer()
    assert django.loads(fast.dumps(data)) == django.loads(django.dumps(data))
    assert fast.loads(django.dumps(data)) == django.loads(django.dumps(data))
    assert fast.loads(fast.dumps(data)) == django.loads(django.dumps(data))


def test_a_payload_orjson_cannot_parse_is_read_as_django_reads_it() -> None:
    payload = JSONSerializer().dumps({"nan": math.nan, "inf": math.inf})
    assert b"NaN" in payload  # json writes what JSON has no literal for; orjson refuses it
    data = FastJSONSerializer().loads(payload)
    assert math.isnan(data["nan"]) and data["inf"] == math.inf
    with pytest.raises(ValueError):
        FastJSONSerializer().loads(b'{"not json"')


def test_json_cannot_store_what_django_cannot_either() -> None:
    @dataclasses.dataclass
    class Point:
        x: int

    for value in ({1, 2}, object(), datetime.datetime(2026, 1, 1), Point(1), 10**5000):
        with pytest.raises((TypeError, ValueError)):
            JSONSerializer().dumps({"v": value})
        with pytest.raises((TypeError, ValueError)):
            FastJSONSerializer().dumps({"v": value})


# Through a real state server, as a site switching SESSION_SERIALIZER would.


@pytest.mark.stateserver
def test_sessions_survive_switching_the_serializer_either_way(
    stateserver: StateServerProcess, settings: Any
) -> None:
    settings.STATEMODES_STATE_CONNECTION = stateserver.connection
    data = {**PLAIN, "cart": [{"sku": f"SKU-{i}", "qty": i} for i in range(2000)]}
    with override_settings(SESSION_SERIALIZER=DJANGO):
        by_django = save(data)
    with override_settings(SESSION_SERIALIZER=FAST):
        by_fast = save(data)
        item = client_for(stateserver).get(by_fast)
        assert item is not None and item.data is not None
        assert bytes(item.data) == RAW + JSONSerializer().dumps(data)  # Django's very bytes
        assert load(by_django) == load(by_fast) == data
    with override_settings(SESSION_SERIALIZER=DJANGO):
        assert load(by_fast) == data


@pytest.mark.stateserver
def test_a_value_it_cannot_store_is_refused_where_it_is_set(
    stateserver: StateServerProcess, settings: Any
) -> None:
    settings.STATEMODES_STATE_CONNECTION = stateserver.connection
    with override_settings(SESSION_SERIALIZER=FAST):
        session = SessionStore(access="ReadWrite")
        with pytest.raises(SessionValueError, match="'when'"):
            session["when"] = {1, 2}
        session["fine"] = 1 << 70  # beyond orjson's integers: json stores it
        session.finish(save=True)
        assert session.session_key is not None
        assert load(session.session_key) == {"fine": 1 << 70}
