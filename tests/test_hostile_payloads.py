"""Payloads planted in the store by whoever can write to it (issue 14): never a memory spike.

A zlib bomb (200 MB of JSON that compresses to about 200 KB) is written straight into a real
state server through the provider, as an attacker with access to the store would. Loading it
must give an empty session and a ``django.security.SuspiciousSession`` log, and the loading
process's memory must grow by less than twice ``STATEMODES_MAX_SESSION_SIZE``. The memory is
measured in a fresh subprocess (its ``ru_maxrss`` before and after the load, and tracemalloc's
peak during it), so the pytest process's own history does not blur the numbers.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from django_statemodes.backends.stateserver import SessionStore
from django_statemodes.core.codec import RAW, ZLIB, SerializingCodec
from django_statemodes.providers.stateserver import StateServerProvider
from django_statemodes.testing import new_key
from tests.fixtures_stateserver import StateServerProcess

pytestmark = [pytest.mark.stateserver]

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
LIMIT = 4 * MIB  # STATEMODES_MAX_SESSION_SIZE's default
SECURITY_LOGGER = "django.security.SuspiciousSession"


def json_bomb(megabytes: int) -> bytes:
    """Return ZLIB + the compressed form of ``{"pad": "000...0"}``, ``megabytes`` MiB of zeros.

    Valid JSON, so that only the bound (not a parse error) can keep it out of a session. Built
    a mebibyte at a time: the test process never holds the inflated form.
    """
    deflate = zlib.compressobj(9)
    parts = [deflate.compress(b'{"pad":"')]
    block = b"0" * MIB
    parts.extend(deflate.compress(block) for _ in range(megabytes))
    parts.append(deflate.compress(b'"}'))
    parts.append(deflate.flush())
    return ZLIB + b"".join(parts)


def plant(connection: str, payload: bytes) -> str:
    """Write ``payload`` as a session's stored bytes, bypassing the codec; return its key."""
    key = new_key()
    provider = StateServerProvider(connection=connection)
    try:
        assert provider.set_and_release(key, payload, lock_id=None, timeout=20, new_item=True)
    finally:
        provider.close()
    return key


@pytest.fixture
def connection(stateserver: StateServerProcess) -> Iterator[str]:
    with override_settings(STATEMODES_STATE_CONNECTION=stateserver.connection):
        yield stateserver.connection


# Runs in a fresh interpreter: load a harmless compressed session first (all imports made, the
# connection open), then the planted one twice: once for the peak RSS, once under tracemalloc
# for the peak of Python's allocations. The peak RSS is the kernel's high-water mark, VmHWM
# (Linux), reset to the current RSS through /proc/self/clear_refs just before the load, so that
# import-time peaks do not hide it. ru_maxrss reports the same mark but never below the RSS of
# the process that exec'd this one (pytest's, here), which would hide it too.
LOADER = """
import ctypes, ctypes.util, gc, json, logging, sys, tracemalloc

import django
from django.test.utils import override_settings

django.setup()
records = []

class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())

logging.getLogger("django.security.SuspiciousSession").addHandler(Keep())
connection, warm, planted = sys.argv[1:4]

def maxrss():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB

with override_settings(STATEMODES_STATE_CONNECTION=connection):
    from django_statemodes.backends.stateserver import SessionStore

    assert sorted(SessionStore(warm, access="ReadOnly").keys()) == ["warm"]
    gc.collect()
    # Hand freed heap memory back to the system first, so the load cannot hide in pages the
    # imports left resident: what it allocates shows as RSS growth.
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # Linux: reset the peak RSS to the current RSS
    before = maxrss()
    data = dict(SessionStore(planted, access="ReadOnly").items())
    rss_growth = maxrss() - before
    tracemalloc.start()
    again = dict(SessionStore(planted, access="ReadOnly").items())
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
print(json.dumps({
    "keys": sorted(data) + sorted(again),
    "records": records,
    "rss_growth": rss_growth,
    "traced_peak": traced_peak,
}))
"""


def load_in_subprocess(connection: str, warm: str, planted: str) -> dict[str, Any]:
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", LOADER, connection, warm, planted],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def test_a_planted_zlib_bomb_loads_empty_and_logged_without_a_memory_spike(
    connection: str,
) -> None:
    payload = json_bomb(200)
    assert len(payload) < MIB  # what the attacker writes: small
    planted = plant(connection, payload)
    warm = plant(connection, ZLIB + zlib.compress(json.dumps({"warm": "x" * 1000}).encode()))

    result = load_in_subprocess(connection, warm, planted)

    print(f"bomb: rss growth {result['rss_growth']} B, traced peak {result['traced_peak']} B")
    assert result["keys"] == []
    assert any("STATEMODES_MAX_SESSION_SIZE" in record for record in result["records"])
    assert result["rss_growth"] < 2 * LIMIT
    assert result["traced_peak"] < 2 * LIMIT


def test_a_planted_zlib_bomb_loads_empty_with_compression_off(
    connection: str, caplog: pytest.LogCaptureFixture
) -> None:
    planted = plant(connection, json_bomb(8))  # 8 MiB inflated: twice the limit
    with caplog.at_level(logging.WARNING, logger=SECURITY_LOGGER):
        assert dict(SessionStore(planted, access="ReadOnly").items()) == {}
    assert [r.name for r in caplog.records] == [SECURITY_LOGGER]


@pytest.mark.parametrize("compression", [False, True])
def test_a_compressed_session_up_to_the_limit_still_loads(
    connection: str, compression: bool
) -> None:
    # Switching compression off must not lose sessions stored compressed: the marker decides.
    body = json.dumps({"pad": "0" * (LIMIT - 20)}, separators=(",", ":")).encode()
    assert len(body) <= LIMIT
    planted = plant(connection, ZLIB + zlib.compress(body))
    with override_settings(STATEMODES_COMPRESSION=compression):
        assert len(SessionStore(planted, access="ReadOnly")["pad"]) == LIMIT - 20


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(ZLIB + zlib.compress(b'{"a": 1}')[:-6], id="truncated"),
        pytest.param(ZLIB + b"not zlib at all", id="not-zlib"),
        pytest.param(b"\x07" + b'{"a": 1}', id="unknown-marker"),
        pytest.param(RAW + b"[1, 2]", id="not-a-dict"),
    ],
)
def test_corrupt_payloads_decode_empty_and_logged(
    payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=SECURITY_LOGGER):
        assert SerializingCodec().decode(payload) == {}
    assert [r.name for r in caplog.records] == [SECURITY_LOGGER]


@override_settings(STATEMODES_MAX_SESSION_SIZE=1000)
def test_the_inflate_bound_follows_the_size_limit(caplog: pytest.LogCaptureFixture) -> None:
    codec = SerializingCodec()
    fits = json.dumps({"a": "b" * 900}).encode()
    assert codec.decode(ZLIB + zlib.compress(fits)) == {"a": "b" * 900}
    over = json.dumps({"a": "b" * 1000}).encode()
    with caplog.at_level(logging.WARNING, logger=SECURITY_LOGGER):
        assert codec.decode(ZLIB + zlib.compress(over)) == {}
    assert "STATEMODES_MAX_SESSION_SIZE" in caplog.records[0].getMessage()
