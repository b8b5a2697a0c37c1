"""Request-cycle benchmark: our engines side by side with Django's own, in one process.

A cycle is what a request does to its session: build the store from the cookie's key, load it
(first access), change one value, save. Ours do it as the middleware does: ``SessionStore(key,
access="ReadWrite")``, which locks on load, then ``finish(save=True)``, which saves and releases
in one store call. Django's engines: ``SessionStore(key)``, then ``save()``.

Engines run in interleaved rounds (A B C A B C ...), so drift on a shared machine hits them
alike; each ratio is taken from this one run, with the range of its per-round ratios. The floors
run in the same rounds and do what our engines must do at least, no less: a dict behind
``SessionBase`` (InProc keeps live objects, no serialization); for the others, read the bytes,
decode them with ``SESSION_SERIALIZER``, change the counter, encode, write: a key-value server
on the state server's event loop, redis-py GET+SET, psycopg SELECT+UPDATE on a table of the same
type as ours (UNLOGGED for ``--type temp``, logged for ``persisted``).

Sweeps: ``--payloads 100,1000,10000,100000`` measures every engine at each session size (1000
is a ~1 KB shop session, the others a cart of small dicts of about that many bytes of JSON);
``--stored 1000,100000`` first fills each store (ours and Django's) with that many other
sessions. After the timed rounds, a separate pass counts the round trips and bytes on the wire
per cycle of each engine, through counting proxies (``benchmarks.wire``).

Run: ``python -m benchmarks.cycle [--engines inproc,stateserver,...] [--iterations N]
[--payloads ...] [--stored ...] [--serializer django|fast] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import engines as registry
from benchmarks.engines import DJANGO, FLOOR, OURS, Engine
from benchmarks.results import record, summary

Cycle = Callable[[], None]
CART = 1000  # --payloads value of the ~1 KB shop session

SERIALIZERS = {
    "django": "django.contrib.sessions.serializers.JSONSerializer",
    "fast": "django_statemodes.serializers.FastJSONSerializer",
}

# (ours, baseline, payload size or None for any, most allowed ratio or None, what it means)
TARGETS: list[tuple[str, str, int | None, float | None, str]] = [
    ("inproc", "django-cache-locmem", None, 0.25, "at least 4x faster than Django's LocMemCache"),
    ("stateserver", "django-cache-redis", CART, 0.25, "Django's cache on django-redis, 1 KB"),
    ("stateserver", "django-cache-redis", 100_000, 0.6, "Django's cache on django-redis, 100 KB"),
    ("stateserver", "django-cache-redis", None, None, "Django's cache on django-redis"),
    ("stateserver", "floor-asyncio-kv", CART, 1.5, "same-loop KV floor with serialization"),
    ("stateserver", "floor-asyncio-kv", None, None, "same-loop KV floor with serialization"),
    ("stateserver-aof", "stateserver", None, None, "StateServer with --appendonly / without"),
    ("sql-pg", "django-db-pg", None, 0.3, "at most 0.3x Django's db on PostgreSQL"),
    ("sql-pg", "floor-psycopg", CART, 2.0, "within 2x of psycopg on the same table type"),
    ("sql-pg", "floor-psycopg", None, None, "psycopg floor on the same table type"),
    ("redis", "django-cache-redis", 100_000, 0.8, "Django's cache on django-redis, 100 KB"),
    ("redis", "django-cache-redis", None, 1.0, "at most 1.0x Django's cache on django-redis"),
    ("redis-cluster", "django-cache-redis", None, None, "on Redis Cluster / django-redis"),
    ("redis-cluster", "redis", None, None, "RedisProvider on Redis Cluster / on one Redis"),
    ("sql-mariadb", "django-db-mariadb", None, 0.5, "at most 0.5x Django's db on MariaDB"),
    ("sql-pgbouncer", "sql-pg", None, 1.5, "via PgBouncer, nothing prepared / direct"),
    ("sql-pgbouncer-prepared", "sql-pg", None, 1.5, "via PgBouncer 1.21+, prepared / direct"),
    ("sql-sqlite", "django-db-sqlite", None, None, "Django's db on SQLite (no target)"),
    ("inproc", "floor-sessionbase", None, None, "SessionBase over a dict (floor)"),
    ("redis", "floor-redis-py", None, None, "redis-py GET+SET with serialization (floor)"),
]


def payload(size: int = CART) -> dict[str, Any]:
    """A session of about ``size`` bytes of JSON, with the ``counter`` every cycle increments.

    ``CART`` is a logged-in shop user with a ten-line cart (1,010 bytes of JSON).
    """
    if size != CART:
        from benchmarks.serializers import session

        return {"counter": 0, **session(max(0, size - 14))}
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


def serializer() -> Any:
    """``SESSION_SERIALIZER``, as our engines and Django's ``db`` encode sessions."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    return import_string(settings.SESSION_SERIALIZER)()


# Cycles. Each builder returns (cycle, counter): counter() reads the stored counter back, so
# a run also proves that every cycle's write landed.


def our_cycle(engine: Engine, data: dict[str, Any]) -> tuple[Cycle, Callable[[], int]]:
    store_class = registry.store_class(engine)
    first = store_class(access="ReadWrite")
    first.update(data)
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


def django_cycle(engine: Engine, data: dict[str, Any]) -> tuple[Cycle, Callable[[], int]]:
    store_class = registry.store_class(engine)
    first = store_class()
    first.update(data)
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


def sessionbase_floor(data: dict[str, Any]) -> tuple[Cycle, Callable[[], int]]:
    from django.contrib.sessions.backends.base import SessionBase

    key = "k" * 32
    stored: dict[str, dict[str, Any]] = {key: dict(data)}

    class DictSession(SessionBase):
        """Django's SessionBase API over a dict of live objects: no I/O, no lock."""

        def load(self) -> dict[str, Any]:
            return dict(stored[key])

        def save(self, must_create: bool = False) -> None:
            stored[key] = dict(self.items())

    def cycle() -> None:
        session = DictSession(key)
        session["counter"] = session["counter"] + 1
        session.save()

    return cycle, lambda: int(stored[key]["counter"])


def _bytes_floor(
    get: Callable[[], bytes | None], put: Callable[[bytes], None], data: dict[str, Any]
) -> tuple[Cycle, Callable[[], int]]:
    """A floor over a store of bytes: read, decode, change, encode, write."""
    codec = serializer()
    put(codec.dumps(data))

    def cycle() -> None:
        raw = get()
        assert raw is not None
        session = codec.loads(raw)
        session["counter"] += 1
        put(codec.dumps(session))

    def counter() -> int:
        raw = get()
        assert raw is not None
        return int(codec.loads(raw)["counter"])

    return cycle, counter


def kv_floor(data: dict[str, Any]) -> tuple[Cycle, Callable[[], int]]:
    from benchmarks.kvserver import KVClient

    client = KVClient(int(os.environ[registry.KV_PORT_ENV]))
    return _bytes_floor(lambda: client.get(b"floor"), lambda v: client.set(b"floor", v), data)


def redis_floor(data: dict[str, Any]) -> tuple[Cycle, Callable[[], int]]:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(getattr(settings, "REDIS_URL"))  # noqa: B009
    key = "statemodes-bench:floor"

    def get() -> bytes | None:
        value = client.get(key)
        assert not isinstance(value, str)  # no decode_responses
        return value

    def put(value: bytes) -> None:
        client.set(key, value, ex=1209600)

    return _bytes_floor(get, put, data)


def psycopg_floor(data: dict[str, Any]) -> tuple[Cycle, Callable[[], int]]:
    conn = registry.floor_connection()  # its table: registry.prepare
    conn.execute(registry.FLOOR_UPSERT, ("floor", b""))

    def get() -> bytes | None:
        row = conn.execute(registry.FLOOR_SELECT, ("floor",), prepare=True).fetchone()
        return None if row is None else bytes(row[0])

    def put(value: bytes) -> None:
        conn.execute(
            "UPDATE statemodes_bench_floor SET data = %s WHERE id = %s",
            (value, "floor"),
            prepare=True,
        )

    return _bytes_floor(get, put, data)


FLOORS: dict[str, Callable[[dict[str, Any]], tuple[Cycle, Callable[[], int]]]] = {
    "floor-sessionbase": sessionbase_floor,
    "floor-asyncio-kv": kv_floor,
    "floor-redis-py": redis_floor,
    "floor-psycopg": psycopg_floor,
    "floor-kv-session": lambda data: django_cycle(registry.ENGINES["floor-kv-session"], data),
}


def build(engine: Engine, data: dict[str, Any]) -> tuple[Cycle, Callable[[], int]]:
    if engine.kind == FLOOR:
        return FLOORS[engine.name](data)
    registry.use(engine)
    return our_cycle(engine, data) if engine.kind == OURS else django_cycle(engine, data)


def fill(engine: Engine, count: int, data: dict[str, Any]) -> None:
    """Store ``count`` more sessions of ``data`` in the engine's store (the stored sweep)."""
    registry.use(engine)
    store_class = registry.store_class(engine)
    for _ in range(count):
        store_new(engine, store_class, data)


def store_new(engine: Engine, store_class: type[Any], data: dict[str, Any]) -> None:
    """Store one new session of ``data``: ours as the middleware does, Django's with save()."""
    if engine.kind == OURS:
        session = store_class(access="ReadWrite")
        session.update(data)
        session.finish(save=True)
    else:
        session = store_class()
        session.update(data)
        session.save()


def server_cpu_ns(engine: Engine) -> int | None:
    """CPU time so far of the server the harness started for ``engine`` (Linux schedstat)."""
    for need in engine.needs:
        pid = registry.SERVER_PIDS.get(need)
        if pid is not None:
            total = 0
            for task in Path(f"/proc/{pid}/task").glob("*"):  # every thread of the server
                try:
                    total += int((task / "schedstat").read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    pass
            return total or None
    return None


def measure(
    engines: list[Engine],
    iterations: int,
    data: dict[str, Any],
    rounds: int = 10,
    cpu: dict[str, dict[str, float]] | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Time ``iterations`` cycles of every engine in interleaved rounds.

    Returns every cycle's µs and each round's median, per engine. ``cpu`` receives the CPU µs
    per cycle of this process and of the server the harness started (where the time goes).
    """
    built = {engine.name: (engine, *build(engine, data)) for engine in engines}
    rounds = max(1, min(rounds, iterations))
    per_round = math.ceil(iterations / rounds)
    warmup = max(3, iterations // 20)
    samples: dict[str, list[float]] = {name: [] for name in built}
    medians: dict[str, list[float]] = {name: [] for name in built}
    for engine, cycle, _ in built.values():
        registry.use(engine)
        for _ in range(warmup):
            cycle()
    clock = time.perf_counter_ns
    spent = {name: [0, 0] for name in built}  # this process's CPU ns, the server's CPU ns
    for round_ in range(rounds):
        names = list(built)
        shift = round_ % len(names)  # each engine takes every place in the order in turn
        for name in names[shift:] + names[:shift]:
            engine, cycle, _ = built[name]
            registry.use(engine)
            timings = []
            cpu_before, server_before = time.process_time_ns(), server_cpu_ns(engine)
            for _ in range(per_round):
                started = clock()
                cycle()
                timings.append((clock() - started) / 1000)
            spent[name][0] += time.process_time_ns() - cpu_before
            server_after = server_cpu_ns(engine)
            if server_before is not None and server_after is not None:
                spent[name][1] += server_after - server_before
            samples[name] += timings
            medians[name].append(statistics.median(timings))
    for name, (engine, _, counter) in built.items():
        registry.use(engine)
        expected = warmup + rounds * per_round
        got = counter()
        if got != expected:
            raise SystemExit(f"{name}: the counter is {got} after {expected} cycles: writes lost")
        if cpu is not None:
            cycles = rounds * per_round
            cpu[name] = {"client_cpu": spent[name][0] / cycles / 1000}
            if server_cpu_ns(engine) is not None:
                cpu[name]["server_cpu"] = spent[name][1] / cycles / 1000
    return samples, medians


def target_of(ours: str, base: str, size: int) -> tuple[float | None, str] | None:
    """The target of a ratio at a payload size: a size's own row first, else the general one."""
    general = None
    for engine, baseline, at, target, what in TARGETS:
        if (engine, baseline) != (ours, base):
            continue
        if at == size:
            return target, what
        if at is None:
            general = (target, what)
    return general


def ratios(
    medians: dict[str, float], rounds: dict[str, list[float]], size: int
) -> list[dict[str, Any]]:
    rows = []
    pairs = list(dict.fromkeys((ours, base) for ours, base, *_ in TARGETS))
    for ours, base in pairs:
        found = target_of(ours, base, size)
        if ours not in medians or base not in medians or found is None:
            continue
        target, what = found
        ratio = medians[ours] / medians[base]
        per_round = [a / b for a, b in zip(rounds[ours], rounds[base], strict=True)]
        rows.append(
            {
                "engine": ours,
                "baseline": base,
                "ratio": ratio,
                "low": min(per_round),
                "high": max(per_round),
                "target": target,
                "met": None if target is None else ratio <= target,
                "what": what,
            }
        )
    return rows


def report(
    stats: dict[str, dict[str, float]],
    rows: list[dict[str, Any]],
    wire: dict[str, dict[str, float]] | None = None,
) -> str:
    wire = wire or {}
    lines = [
        f"{'engine':<24}{'median µs':>12}{'p95 µs':>12}{'cycles':>9}"
        f"{'round trips':>13}{'bytes/cycle':>13}{'CPU µs here':>13}{'server':>8}"
    ]
    for name, stat in stats.items():
        counted = wire.get(name)
        trips = "-" if counted is None else f"{counted['round_trips']:.2f}"
        size = "-" if counted is None else f"{counted['bytes']:,.0f}"
        here = f"{stat['client_cpu']:.1f}" if "client_cpu" in stat else "-"
        server = f"{stat['server_cpu']:.1f}" if "server_cpu" in stat else "-"
        lines.append(
            f"{name:<24}{stat['median']:>12.1f}{stat['p95']:>12.1f}{stat['n']:>9}"
            f"{trips:>13}{size:>13}{here:>13}{server:>8}"
        )
    if rows:
        lines += ["", f"{'ratio (medians)':<44}{'value':>8}{'rounds':>16}{'target':>10}  met"]
        for row in rows:
            target = "-" if row["target"] is None else f"<= {row['target']}"
            met = "-" if row["met"] is None else ("yes" if row["met"] else "NO")
            label = f"{row['engine']} / {row['baseline']}"
            spread = f"{row['low']:.2f}-{row['high']:.2f}"
            lines.append(f"{label:<44}{row['ratio']:>8.3f}{spread:>16}{target:>10}  {met}")
    return "\n".join(lines)


def count_round_trips(chosen: list[Engine], data: dict[str, Any], cycles: int) -> None:
    """The counting pass: every server behind a counting proxy; prints JSON per engine."""
    from benchmarks.wire import Wire

    wire = Wire()
    os.environ["STATEMODES_BENCH_PG_PORT"] = str(wire.proxy(registry.PG_PORT))
    os.environ["STATEMODES_BENCH_REDIS_PORT"] = str(wire.proxy(registry.REDIS_PORT))
    registry.setup_django()
    chosen = registry.runnable(chosen, say=lambda _: None)
    counted: dict[str, dict[str, float]] = {}
    with registry.services(chosen, wrap=wire.proxy):
        for engine in chosen:
            if engine.kind == FLOOR and engine.name == "floor-sessionbase":
                continue
            if "redis-cluster" in engine.needs:
                continue  # the client follows the cluster's redirections to unproxied nodes
            cycle, _ = build(engine, data)
            for _ in range(3):
                cycle()
            wire.take()
            for _ in range(cycles):
                cycle()
            counts = wire.take()
            counted[engine.name] = {
                "round_trips": counts.turns / cycles,
                "bytes": (counts.sent + counts.received) / cycles,
            }
    wire.close()
    print(json.dumps(counted))


def round_trips(args: argparse.Namespace, size: int) -> dict[str, dict[str, float]]:
    """Run the counting pass in its own interpreter (its settings point at the proxies)."""
    command = [sys.executable, "-m", "benchmarks.cycle", "--count-round-trips", "--payloads"]
    command += [str(size), "--serializer", args.serializer]
    if args.engines:
        command += ["--engines", args.engines]
    if args.baselines:
        command += ["--baselines", args.baselines]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"round trips not counted: {done.stderr.strip()[-500:]}", file=sys.stderr)
        return {}
    counted: dict[str, dict[str, float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return counted


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
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument(
        "--payloads", default=str(CART), help="session sizes in bytes (comma-separated)"
    )
    parser.add_argument(
        "--stored", default="", help="other sessions stored first, a sweep (e.g. 1000,100000)"
    )
    parser.add_argument("--serializer", choices=sorted(SERIALIZERS), default="django")
    parser.add_argument("--no-round-trips", action="store_true", help="skip the counting pass")
    parser.add_argument("--count-round-trips", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--no-save", action="store_true", help="do not write results/latest.json")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.payloads.split(",")]
    stored = [int(count) for count in args.stored.split(",") if count]

    os.environ["STATEMODES_BENCH_SERIALIZER"] = SERIALIZERS[args.serializer]
    chosen = registry.select(args.engines, OURS)
    if args.baselines is None:
        chosen += registry.select("all", DJANGO) + registry.select("all", FLOOR)
    else:
        chosen += registry.select(args.baselines, DJANGO)
    if args.count_round_trips:
        count_round_trips(chosen, payload(sizes[0]), 20)
        return
    registry.setup_django()
    chosen = registry.runnable(chosen)
    labels = {engine.name: engine.label for engine in chosen}
    kinds = {engine.name: engine.kind for engine in chosen}
    print(
        f"our SQL tables: {registry.SQL_TYPE} (STATEMODES_BENCH_SQL_TYPE); "
        f"serializer: {args.serializer}; {args.iterations} cycles per engine in "
        f"{args.rounds} interleaved rounds; ratio ranges are the rounds'"
    )
    sweep: dict[str, dict[str, Any]] = {}
    with registry.services(chosen):
        for size in sizes:
            cpu: dict[str, dict[str, float]] = {}
            samples, medians = measure(chosen, args.iterations, payload(size), args.rounds, cpu)
            stats = {name: summary(timings) | cpu[name] for name, timings in samples.items()}
            rows = ratios({n: s["median"] for n, s in stats.items()}, medians, size)
            sweep[str(size)] = {"engines": stats, "ratios": rows}
        filled = 0
        stores = [e for e in chosen if e.kind != FLOOR and e.name != "django-signed-cookies"]
        by_stored: dict[str, dict[str, Any]] = {}
        for count in stored:
            for engine in stores:
                fill(engine, count - filled, payload(sizes[0]))
            filled = count
            cpu = {}
            samples, medians = measure(stores, args.iterations, payload(sizes[0]), args.rounds, cpu)
            stats = {name: summary(timings) | cpu[name] for name, timings in samples.items()}
            rows = ratios({n: s["median"] for n, s in stats.items()}, medians, sizes[0])
            by_stored[str(count)] = {"engines": stats, "ratios": rows}
    wire = {} if args.no_round_trips else round_trips(args, sizes[0])
    for size_text, result in sweep.items():
        print(f"\n-- session of {int(size_text):,} bytes --")
        counted = wire if int(size_text) == sizes[0] else None
        print(report(result["engines"], result["ratios"], counted))
    for count_text, result in by_stored.items():
        print(f"\n-- {int(count_text):,} other sessions stored, session of {sizes[0]:,} bytes --")
        print(report(result["engines"], result["ratios"]))
    data = {
        "iterations": args.iterations,
        "unit": "µs",
        "sql_table_type": registry.SQL_TYPE,
        "serializer": args.serializer,
        "payload_bytes": sizes[0],
        "engines": {
            name: {**stat, "label": labels[name], "kind": kinds[name], **wire.get(name, {})}
            for name, stat in sweep[str(sizes[0])]["engines"].items()
        },
        "ratios": sweep[str(sizes[0])]["ratios"],
        "payloads": sweep,
        "stored": by_stored,
        "round_trips": wire,
    }
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if not args.no_save:
        record("cycle", data)


if __name__ == "__main__":
    main()
