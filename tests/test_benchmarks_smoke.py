"""The benchmark harness keeps working (it runs a few cycles; speed is never asserted here)."""

from __future__ import annotations

import re

import pytest

from benchmarks.targets import CONTEXT, ROWS
from tests.benchmark_runs import run_benchmark
from tests.conftest import REQUIRE_SERVICES, need_service


def run_cycle(*args: str) -> str:
    result = run_benchmark("cycle", *args, "--iterations", "20", "--rounds", "2", "--no-save")
    assert result.returncode == 0, result.stderr
    return result.stdout


# median, p95, cycles, round trips, bytes per cycle, CPU µs here and in the server
ENGINE_ROW = (
    r"\s+([0-9.]+)\s+([0-9.]+)\s+(\d+)\s+([0-9.]+|-)\s+([0-9,]+|-)\s+([0-9.]+)\s+([0-9.]+|-)$"
)


def row(output: str, engine: str) -> re.Match[str]:
    match = re.search(rf"^{re.escape(engine)}{ENGINE_ROW}", output, re.M)
    assert match, f"no numbers for {engine} in:\n{output}"
    assert int(match.group(3)) >= 20
    return match


def test_cycle_harness_reports_inproc_beside_djangos_locmem_cache() -> None:
    output = run_cycle("--engines", "inproc", "--baselines", "django-cache-locmem")

    assert float(row(output, "inproc").group(1)) > 0
    assert float(row(output, "django-cache-locmem").group(1)) > 0
    # The ratio, the range of its per-round ratios, the target.
    assert re.search(
        r"^inproc / django-cache-locmem\s+[0-9.]+\s+[0-9.]+-[0-9.]+\s+<= 0\.25", output, re.M
    ), output
    # No network: no round trip, no byte on the wire.
    assert row(output, "inproc").group(4) == "0.00"


def test_cycle_harness_counts_round_trips_per_cycle_on_the_wire() -> None:
    need_service("Redis", "127.0.0.1", 6379)
    output = run_cycle(
        "--engines", "stateserver", "--baselines", "django-cache-redis,floor-asyncio-kv",
        "--payloads", "1000,10000",
    )  # fmt: skip

    # Lock and load, then save and release; django-redis: EXISTS, GET, SET; the floor GET, SET.
    assert row(output, "stateserver").group(4) == "2.00"
    assert row(output, "django-cache-redis").group(4) == "3.00"
    assert row(output, "floor-asyncio-kv").group(4) == "2.00"
    # Where the time goes: the CPU of the servers the harness started is read too.
    assert row(output, "stateserver").group(7) != "-"
    assert row(output, "django-cache-redis").group(7) == "-"  # Redis was not started by it
    assert "-- session of 10,000 bytes --" in output


def test_cycle_harness_rejects_an_unknown_engine_by_name() -> None:
    result = run_benchmark("cycle", "--engines", "nosuch", "--no-save", timeout=60)

    assert result.returncode != 0
    assert "unknown engine 'nosuch'" in result.stderr


def test_asgi_harness_serves_an_engine_under_uvicorn() -> None:
    result = run_benchmark(
        "asgi", "--engines", "inproc", "--baselines", "none", "--no-floor",
        "--requests", "50", "--rounds", "1", "--no-save",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"^inproc\s+[0-9,]+ \(", result.stdout, re.M), result.stdout


def test_middleware_harness_compares_with_djangos_pair_on_a_larger_urlconf() -> None:
    result = run_benchmark(
        "middleware", "--routes", "50", "--iterations", "200", "--rounds", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "50 other routes" in result.stdout
    for row in ("read-write", "django read-write", "floor"):
        assert re.search(rf"^{row}\s+-?[0-9.]+ \(", result.stdout, re.M), result.stdout
    assert re.search(r"^this tree\s+[0-9.]+ \(", result.stdout, re.M), result.stdout


def test_serializers_harness_compares_djangos_json_with_the_fast_one() -> None:
    result = run_benchmark("serializers", "--rounds", "1", "--sizes", "100,1000")
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"^\s+1000 B\s+[0-9.]+ \(.*\)\s+[0-9.]+ \(.*\)\s+[0-9.]+$", result.stdout, re.M
    )


def test_targets_quick_mode_prints_every_target_with_its_spread_and_verdict() -> None:
    result = run_benchmark("__main__", "--quick", "--no-save", timeout=900)
    assert result.returncode == 0, result.stderr

    for target in ROWS:
        line = next(
            (ln for ln in result.stdout.splitlines() if f"| {target.measurement} |" in ln), None
        )
        assert line is not None, f"no row for {target.measurement!r} in:\n{result.stdout}"
        measured = re.search(
            r"\| [-+0-9.,%x ]+ \(.+-.+\), 3 \| [^|]+ \| (met|not met|met busy)", line
        )
        if REQUIRE_SERVICES:
            assert measured, line
        else:
            assert measured or "not measured: " in line, line
    if REQUIRE_SERVICES:
        # The floors that bound the rows (a store without session work; two round trips over
        # HTTP) are measured beside them.
        for _, label in CONTEXT:
            assert re.search(
                rf"^\| {re.escape(label)} \| \| [0-9.,]+ \([0-9.,]+-[0-9.,]+\), 3 \|",
                result.stdout,
                re.M,
            ), result.stdout


def test_user_index_harness_measures_the_state_server_and_redis() -> None:
    import redis

    from benchmarks.settings import REDIS_URL
    from benchmarks.user_index import REDIS_PREFIX

    need_service("Redis", "127.0.0.1", 6379)
    result = run_benchmark(
        "user_index", "--engines", "stateserver,redis", "--iterations", "30", "--rounds", "2",
        "--stored", "100", "--calls", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    output = result.stdout
    for engine in ("stateserver", "redis"):
        # Index off, on and on with a touch every request, with the ratios and their spread.
        assert re.search(
            rf"^{engine}: request cycle, µs \(median of round medians\): off [0-9.]+, "
            rf"on [0-9.]+ \([0-9.]+x, rounds [0-9.]+-[0-9.]+\), "
            rf"on with a touch every request [0-9.]+ \([0-9.]+x\)$",
            output,
            re.M,
        ), output
        assert re.search(
            rf"^{engine}: request cycle, this process's CPU µs per cycle: off [0-9.]+, "
            rf"on [0-9.]+ \([0-9.]+x\), touch every request [0-9.]+ \([0-9.]+x\)$",
            output,
            re.M,
        ), output
        # Printed only once the listing found exactly the user's 5 sessions.
        assert re.search(
            rf"^{engine}: user_sessions \(5 sessions\) among 105 stored: [0-9.]+ µs "
            rf"\(filled in [0-9.]+ s\)$",
            output,
            re.M,
        ), output
    # The Redis fill is removed (the database is shared: only its own keys, by prefix).
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert list(client.scan_iter(match=f"{REDIS_PREFIX}:*")) == []
    finally:
        client.close()


def test_pgbouncer_hop_harness_times_plain_statements_through_each_pooler() -> None:
    need_service("PostgreSQL", "127.0.0.1", 5432)
    result = run_benchmark("pgbouncer_hop", "--rounds", "2", "--cycles", "5")
    assert result.returncode == 0, result.stderr
    # Two kinds of statements, each direct and through both PgBouncers, with the ratio to
    # direct and its range over the rounds.
    lines = re.findall(
        r"^(engine's statements|SELECT\+UPDATE) +(direct|PgBouncer [^ ]+) .* ([0-9.]+) µs +"
        r"([0-9.]+)x direct \(rounds [0-9.]+-[0-9.]+\)$",
        result.stdout,
        re.M,
    )
    assert len(lines) == 6, result.stdout
    assert all(float(line[3]) == 1.0 for line in lines if line[1] == "direct")


def test_throughput_harness_serves_the_two_round_trip_floors_beside_an_engine() -> None:
    need_service("Redis", "127.0.0.1", 6379)
    need_service("PostgreSQL", "127.0.0.1", 5432)
    result = run_benchmark(
        "throughput", "--engines", "stateserver", "--baselines", "none",
        "--rounds", "1", "--duration", "1", "--no-save", timeout=300,
    )  # fmt: skip
    if "skipped: wrk is not installed" in result.stdout and not REQUIRE_SERVICES:
        pytest.skip("wrk is not installed")
    assert result.returncode == 0, result.stderr

    # The no-session floor, the engine, and the floors that do a session's two round trips:
    # on the key-value server (by hand, and under Django's SessionMiddleware), on Redis and on
    # PostgreSQL by hand. Every request of each answered 2xx (the last column).
    floors = ("floor-asyncio-kv", "floor-kv-session", "floor-redis-py", "floor-psycopg")
    for name in ("none", "stateserver", *floors):
        assert re.search(rf"^{name}\s+[0-9,]+ \(.*\)\s+[0-9.]+ \(.*\)\s+0$", result.stdout, re.M), (
            result.stdout
        )


def test_throughput_harness_rejects_an_unknown_floor() -> None:
    result = run_benchmark("throughput", "--floors", "floor-sessionbase", "--no-save", timeout=60)

    assert result.returncode != 0
    assert "no HTTP floor 'floor-sessionbase'" in result.stderr


def test_session_bytes_harness_measures_the_other_redis_layouts_of_the_same_session() -> None:
    need_service("Redis", "127.0.0.1", 6379)  # redis-server, which the harness starts privately
    result = run_benchmark("session_bytes", "--sessions", "300", timeout=300)
    assert result.returncode == 0, result.stderr

    ours = re.search(r"^Redis used_memory per 1 KB session: ours ([0-9,]+), ", result.stdout, re.M)
    layouts = re.search(
        r"^the same session in other Redis layouts: the payload alone as a string with a TTL "
        r"([0-9,]+); the payload outside a hash of the other fields, with its expiry entry, "
        r"([0-9,]+)$",
        result.stdout,
        re.M,
    )
    listpack = re.search(
        r"^ours on a server with hash-max-listpack-value 2048 \(the hash stays a listpack\): "
        r"([0-9,]+)$",
        result.stdout,
        re.M,
    )
    assert ours and layouts and listpack, result.stdout
    stored, alone, outside, compact = (
        int(m.replace(",", "")) for m in (*ours.groups(), *layouts.groups(), *listpack.groups())
    )
    # The payload by itself is the least any layout holds; the layouts keep all of it.
    assert 1000 < alone < outside, result.stdout
    assert alone < stored, result.stdout
    # The provider's one hash, kept in Redis's compact encoding, holds the whole session in
    # less than the default encoding does, and still more than the payload alone.
    assert alone < compact < stored, result.stdout
