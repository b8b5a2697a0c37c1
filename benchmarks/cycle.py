"""Request-cycle benchmark: our engines side by side with Django's own, in one process.

A cycle is what a request does to its session: build the store from the cookie's key, load it
(first access), change one value, save. Ours do it as the middleware does: ``SessionStore(key,
access="ReadWrite")``, which locks on load, then ``finish(save=True)``, which saves and releases
in one store call. Django's engines: ``SessionStore(key)``, then ``save()``. Payload ~1 KB.

Engines run in interleaved rounds, so drift on a shared machine hits all of them alike, and the
ratios of DESIGN.md §5 are taken from this one run. The floors (a dict behind ``SessionBase``, a
minimal asyncio key-value server, redis-py GET+SET, psycopg SELECT+UPDATE) run in the same rounds.

Run: ``python -m benchmarks.cycle [--engines inproc,stateserver,...] [--iterations N]``
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from typing import Any

from benchmarks import engines as registry
from benchmarks.engines import DJANGO, FLOOR, OURS, Engine
from benchmarks.results import record, summary

Cycle = Callable[[], None]

# (ours, baseline, most allowed ratio or None, what DESIGN.md §5 asks)
TARGETS: list[tuple[str, str, float | None, str]] = [
    (
        "inproc",
        "django-cache-locmem",
        0.25,
        "at least 4x faster than Django's cache on LocMemCache",
    ),
    ("stateserver", "django-cache-redis", 0.6, "at most 0.6x Django's cache on django-redis"),
    ("stateserver-aof", "stateserver", None, "StateServer with --appendonly / without"),
    ("sql-pg", "django-db-pg", 0.3, "at most 0.3x Django's db on PostgreSQL"),
    ("sql-pg", "floor-psycopg", 2.0, "within 2x of raw psycopg SELECT+UPDATE"),
    ("redis", "django-cache-redis", 1.0, "at most 1.0x Django's cache on django-redis"),
    ("redis-cluster", "django-cache-redis", None, "on Redis Cluster / django-redis on one Redis"),
    ("redis-cluster", "redis", None, "RedisProvider on Redis Cluster / on one Redis"),
    ("sql-sqlite", "django-db-sqlite", None, "Django's db on SQLite (no target)"),
    ("inproc", "floor-sessionbase", None, "SessionBase over a dict (floor)"),
    ("stateserver", "floor-asyncio-kv", None, "minimal asyncio KV server (floor)"),
    ("redis", "floor-redis-py", None, "redis-py GET+SET (floor)"),
]


def payload() -> dict[str, Any]:
    """A ~1 KB session as a logged-in shop user has it (1,010 bytes of JSON)."""
    return {
        "_auth_user_id": "4242",
        "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
        "_auth_user_hash": "a" * 64,
        "_language": "en",
        "counter": 0,
        "cart": [
            {"sku": f"SKU-{i:05d}", "name": f"Item number {i}", "qty": i % 3 + 1, "price": "19.99"}
            for i in range(10)
        ],
        "last_seen": "2026-11-22T02:00:00+00:00",
    }


def payload_bytes() -> bytes:
    import json

    return json.dumps(payload()).encode()


# Cycles. Each builder returns (cycle, counter): counter() reads the stored counter back, so
# a run also proves that every cycle's write landed.


def our_cycle(engine: Engine) -> tuple[Cycle, Callable[[], int]]:
    store_class = registry.store_class(engine)
    first = store_class(access="ReadWrite")
    first.update(payload())
    first.finish(save=True)
    key = first.session_key

    def cycle() -> None:
        session = store_class(key, access="ReadWrite")
        session["counter"] = session["counter"] + 1
        session.finish(save=True)

    def counter() -> int:
        value: int = store_class(key)["counter"]
        return value

    return cycle, counter


def django_cycle(engine: Engine) -> tuple[Cycle, Callable[[], int]]:
    store_class = registry.store_class(engine)
    first = store_class()
    first.update(payload())
    first.save()
    keys = [first.session_key]  # signed_cookies: the key is the data, new on every save

    def cycle() -> None:
        session = store_class(keys[0])
        session["counter"] = session["counter"] + 1
        session.save()
        keys[0] = session.session_key

    def counter() -> int:
        value: int = store_class(keys[0])["counter"]
        return value

    return cycle, counter


def sessionbase_floor() -> tuple[Cycle, Callable[[], int]]:
    from django.contrib.sessions.backends.base import SessionBase

    key = "k" * 32
    data: dict[str, dict[str, Any]] = {key: payload()}

    class DictSession(SessionBase):
        """Django's SessionBase API over a dict of live objects: no I/O, no lock."""

        def load(self) -> dict[str, Any]:
            return dict(data[key])

        def save(self, must_create: bool = False) -> None:
            data[key] = dict(self.items())

    def cycle() -> None:
        session = DictSession(key)
        session["counter"] = session["counter"] + 1
        session.save()

    return cycle, lambda: int(data[key]["counter"])


def kv_floor() -> tuple[Cycle, Callable[[], int]]:
    from benchmarks.kvserver import KVClient

    client = KVClient(int(os.environ[registry.KV_PORT_ENV]))
    value = payload_bytes()
    client.set(b"floor", value)
    count = [0]

    def cycle() -> None:
        client.set(b"floor", client.get(b"floor") or value)
        count[0] += 1

    return cycle, lambda: count[0]


def redis_floor() -> tuple[Cycle, Callable[[], int]]:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(getattr(settings, "REDIS_URL"))  # noqa: B009
    key = "statemodes-bench:floor"
    client.set(key, payload_bytes(), ex=1209600)
    count = [0]

    def cycle() -> None:
        client.set(key, client.get(key) or b"", ex=1209600)
        count[0] += 1

    return cycle, lambda: count[0]


def psycopg_floor() -> tuple[Cycle, Callable[[], int]]:
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["pg"]
    conn = psycopg.connect(
        host=db["HOST"], port=db["PORT"], dbname=db["NAME"], user=db["USER"], autocommit=True
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS statemodes_bench_floor (id text PRIMARY KEY, data bytea)"
    )
    conn.execute(
        "INSERT INTO statemodes_bench_floor VALUES ('floor', %s) "
        "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
        (payload_bytes(),),
    )
    count = [0]

    def cycle() -> None:
        row = conn.execute(
            "SELECT data FROM statemodes_bench_floor WHERE id = %s", ("floor",), prepare=True
        ).fetchone()
        assert row is not None
        conn.execute(
            "UPDATE statemodes_bench_floor SET data = %s WHERE id = %s",
            (row[0], "floor"),
            prepare=True,
        )
        count[0] += 1

    return cycle, lambda: count[0]


FLOORS = {
    "floor-sessionbase": sessionbase_floor,
    "floor-asyncio-kv": kv_floor,
    "floor-redis-py": redis_floor,
    "floor-psycopg": psycopg_floor,
}


def build(engine: Engine) -> tuple[Cycle, Callable[[], int]]:
    if engine.kind == FLOOR:
        return FLOORS[engine.name]()
    registry.use(engine)
    return our_cycle(engine) if engine.kind == OURS else django_cycle(engine)


def measure(engines: list[Engine], iterations: int, rounds: int = 10) -> dict[str, list[float]]:
    """Time ``iterations`` cycles of every engine, in interleaved rounds; µs per cycle."""
    built = {engine.name: (engine, *build(engine)) for engine in engines}
    rounds = max(1, min(rounds, iterations))
    per_round = math.ceil(iterations / rounds)
    warmup = max(3, iterations // 20)
    samples: dict[str, list[float]] = {name: [] for name in built}
    for engine, cycle, _ in built.values():
        registry.use(engine)
        for _ in range(warmup):
            cycle()
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for name, (engine, cycle, _) in built.items():
            registry.use(engine)
            timings = samples[name]
            for _ in range(per_round):
                started = clock()
                cycle()
                timings.append((clock() - started) / 1000)
    for name, (engine, _, counter) in built.items():
        registry.use(engine)
        expected = warmup + rounds * per_round
        got = counter()
        if got != expected:
            raise SystemExit(f"{name}: the counter is {got} after {expected} cycles: writes lost")
    return samples


def ratios(medians: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for ours, base, target, what in TARGETS:
        if ours in medians and base in medians:
            ratio = medians[ours] / medians[base]
            rows.append(
                {
                    "engine": ours,
                    "baseline": base,
                    "ratio": ratio,
                    "target": target,
                    "met": None if target is None else ratio <= target,
                    "what": what,
                }
            )
    return rows


def report(stats: dict[str, dict[str, float]], rows: list[dict[str, Any]]) -> str:
    lines = [f"{'engine':<24}{'median µs':>12}{'p95 µs':>12}{'cycles':>9}"]
    for name, stat in stats.items():
        lines.append(f"{name:<24}{stat['median']:>12.1f}{stat['p95']:>12.1f}{stat['n']:>9}")
    if rows:
        lines += ["", f"{'ratio (medians)':<44}{'value':>8}{'target':>10}  met"]
        for row in rows:
            target = "-" if row["target"] is None else f"<= {row['target']}"
            met = "-" if row["met"] is None else ("yes" if row["met"] else "NO")
            label = f"{row['engine']} / {row['baseline']}"
            lines.append(f"{label:<44}{row['ratio']:>8.3f}{target:>10}  {met}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cycle", description=__doc__)
    parser.add_argument(
        "--engines", help="our engines (default all): " + ",".join(registry.names(OURS))
    )
    parser.add_argument(
        "--baselines",
        help="Django's engines and floors (default all): "
        + ",".join(registry.names(DJANGO) + registry.names(FLOOR)),
    )
    parser.add_argument("--iterations", type=int, default=1000, help="cycles per engine")
    parser.add_argument("--no-save", action="store_true", help="do not write results/latest.json")
    args = parser.parse_args(argv)

    registry.setup_django()
    chosen = registry.select(args.engines, OURS)
    if args.baselines is None:
        chosen += registry.select("all", DJANGO) + registry.select("all", FLOOR)
    else:
        chosen += registry.select(args.baselines, DJANGO)
    chosen = registry.runnable(chosen)
    with registry.services(chosen):
        samples = measure(chosen, args.iterations)
    stats = {name: summary(timings) for name, timings in samples.items()}
    rows = ratios({name: stat["median"] for name, stat in stats.items()})
    print(f"our SQL tables: {registry.SQL_TYPE} (STATEMODES_BENCH_SQL_TYPE)")
    print(report(stats, rows))
    if not args.no_save:
        labels = {engine.name: engine.label for engine in chosen}
        kinds = {engine.name: engine.kind for engine in chosen}
        record(
            "cycle",
            {
                "iterations": args.iterations,
                "unit": "µs",
                "sql_table_type": registry.SQL_TYPE,
                "engines": {
                    name: {**stat, "label": labels[name], "kind": kinds[name]}
                    for name, stat in stats.items()
                },
                "ratios": rows,
            },
        )


if __name__ == "__main__":
    main()
