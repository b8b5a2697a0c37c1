"""The index of sessions by user: its cost on the request cycle, and listing one user's sessions.

Two measurements, per engine (``inproc``, ``sql-pg``, ``stateserver``, ``redis``):

- **The request cycle** of a signed-in session (load with the lock, change a value, save and
  release: ``benchmarks.cycle``'s cycle), with ``STATEMODES_USER_INDEX`` off, on (the default
  ``STATEMODES_USER_INDEX_INTERVAL``, so "last seen" is almost never due), and on with an
  interval of 0 (a "last seen" write on every request: the worst case). Interleaved rounds, as
  ``benchmarks.cycle`` runs them; the ratio is taken from the medians.
- **``user_sessions``** of a user with 5 sessions among N stored sessions, each of the others
  bound to a user of its own: the time must not grow with N.

The request cycle runs on the servers ``benchmarks.engines.services`` starts (a state server of
its own) or finds (Redis at 127.0.0.1:6379, database 14), as ``benchmarks.cycle`` does; the
cycle's session is removed afterwards. The stored sessions are filled fast, beside whatever
else the stores hold:

- SQL: one ``INSERT ... SELECT generate_series`` under an application name of its own (removed
  afterwards), so other applications' rows are untouched; the tables are installed (or
  upgraded) with ``installsqlstate``, never dropped.
- The state server: a server process of its own per count (stopped afterwards), filled through
  the asyncio client, which pipelines its requests on one connection. Its default
  ``--max-memory`` (half of the machine's memory) holds 1,000,000 of these sessions (about
  1.6 kB each, binding included) many times over.
- Redis: pipelines writing the hashes, expiry set and user sets ``RedisProvider`` writes,
  under a key prefix of its own; its keys are removed afterwards with SCAN and UNLINK, in
  batches (never FLUSHDB: the database is shared).

Run: ``python -m benchmarks.user_index [--engines inproc,sql-pg,stateserver,redis]
[--iterations N] [--stored 1000,100000,1000000] [--json PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from benchmarks import engines as registry
from benchmarks.processes import free_port, python_module, running

ENGINES = ("inproc", "sql-pg", "stateserver", "redis")
USER = "bench-user-5"
#: The sessions' data: a signed-in user with a small cart (the cycle increments ``counter``).
DATA = {
    "_auth_user_id": "42",
    "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
    "_auth_user_hash": "0" * 64,
    "counter": 0,
    "cart": [{"sku": f"SKU-{i}", "qty": 1} for i in range(10)],
}
#: The stored sessions' payload, as our serializer writes DATA.
PAYLOAD = b"\x00" + json.dumps(DATA).encode()
#: The stored sessions' lifetime (s), ip and user agent.
TIMEOUT = 3600
IP, USER_AGENT = "192.0.2.0", "Firefox/128"
#: The key prefix of the Redis fill: the SCAN pattern that removes exactly its keys.
REDIS_PREFIX = "statemodes-bench-user-index"
#: Sessions per Redis pipeline and per batch of pipelined state server requests.
BATCH = 2000
MODES: dict[str, dict[str, Any]] = {
    "off": {"STATEMODES_USER_INDEX": False},
    "on": {"STATEMODES_USER_INDEX": True, "STATEMODES_USER_INDEX_INTERVAL": 300},
    "on-touch-every-request": {
        "STATEMODES_USER_INDEX": True,
        "STATEMODES_USER_INDEX_INTERVAL": 0,
    },
}


def cycle_of(store_class: type[Any]) -> tuple[Callable[[], None], str]:
    """A signed-in session's request cycle, and its session key (bound to user 42)."""
    first = store_class(access="ReadWrite")
    first.update(DATA)
    first.finish(save=True)
    key = first.session_key
    provider = store_class.get_provider()
    provider.bind_user(key, "42", ip="192.0.2.0", user_agent="Firefox/128")

    def cycle() -> None:
        session = store_class(key, access="ReadWrite")
        session["counter"] = session["counter"] + 1
        session.finish(save=True)

    return cycle, key


def request_cycle(engine: registry.Engine, iterations: int, rounds: int) -> dict[str, Any]:
    store_class = registry.store_class(engine)
    registry.use(engine)
    cycle, key = cycle_of(store_class)
    try:
        return measure_cycle(engine, cycle, iterations, rounds)
    finally:
        registry.use(engine)
        # Shared stores (Redis, PostgreSQL) keep nothing of ours: the session and its binding.
        store_class.get_provider().remove(key)


def measure_cycle(
    engine: registry.Engine, cycle: Callable[[], None], iterations: int, rounds: int
) -> dict[str, Any]:
    from django.test.utils import override_settings

    per_round = max(1, iterations // rounds)
    medians: dict[str, list[float]] = {mode: [] for mode in MODES}
    # This process's CPU µs per cycle, per round: less disturbed by other processes on a shared
    # machine than the wall clock (the database server's CPU is not in it).
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    for values in MODES.values():  # warm-up
        with override_settings(**values):
            for _ in range(max(3, per_round // 10)):
                cycle()
    for round_ in range(rounds):
        order = list(MODES)
        order = order[round_ % len(order) :] + order[: round_ % len(order)]
        for mode in order:
            with override_settings(**MODES[mode]):
                registry.use(engine)
                timings = []
                cpu_started = time.process_time_ns()
                for _ in range(per_round):
                    started = time.perf_counter_ns()
                    cycle()
                    timings.append((time.perf_counter_ns() - started) / 1000)
                cpu[mode].append((time.process_time_ns() - cpu_started) / per_round / 1000)
            medians[mode].append(statistics.median(timings))
    result: dict[str, Any] = {mode: statistics.median(values) for mode, values in medians.items()}
    for mode in ("on", "on-touch-every-request"):
        ratios = [on / off for on, off in zip(medians[mode], medians["off"], strict=True)]
        result[f"{mode}/off"] = result[mode] / result["off"]
        result[f"{mode}/off range"] = (min(ratios), max(ratios))
        result[f"{mode}/off cpu"] = statistics.median(cpu[mode]) / statistics.median(cpu["off"])
    result["cpu_us"] = {mode: statistics.median(values) for mode, values in cpu.items()}
    return result


# user_sessions among N stored sessions.


def fill_inproc(count: int) -> Any:
    from django_statemodes.providers.inproc import InProcProvider

    provider = InProcProvider(max_items=None)  # a store of its own, unbounded
    for i in range(count):
        key = f"{i:032d}"
        provider.set_and_release(key, dict(DATA), lock_id=None, timeout=3600, new_item=True)
        provider.bind_user(key, f"u{i}", ip="192.0.2.0", user_agent="Firefox/128")
    return provider


def fill_sql(count: int) -> Any:
    from django.core.management import call_command

    from django_statemodes.providers.sql import provider_for

    call_command("installsqlstate", database="pg", verbosity=0)  # upgrades, never drops
    provider = type(provider_for("pg"))("pg", app_name="bench-user-index")
    remove_sql(provider)
    sql = (
        'INSERT INTO "ASPStateTempSessions" ("SessionId", "Created", "Expires", "LockDate", '
        '"LockDateLocal", "LockCookie", "Timeout", "Locked", "SessionItemShort", "Flags", '
        '"UserId", "IpAddress", "UserAgent", "LastSeen") '
        "SELECT lpad(i::text, 32, '0') || %s, now(), now() + interval '1 hour', now(), "
        "localtimestamp, 1, 3600, false, %s, 0, 'u' || i, '192.0.2.0', 'Firefox/128', now() "
        "FROM generate_series(0, %s - 1) AS i"
    )
    payload = b"\x00" + json.dumps(DATA).encode()
    provider.run(lambda conn: conn.execute(sql, (provider.suffix, payload, count)))
    provider.run(lambda conn: conn.execute('ANALYZE "ASPStateTempSessions"'))
    return provider


def remove_sql(provider: Any) -> None:
    sql = 'DELETE FROM "ASPStateTempSessions" WHERE right("SessionId", 8) = %s'
    provider.run(lambda conn: conn.execute(sql, (provider.suffix,)))


def fill_stateserver(count: int, connection: str) -> Any:
    """Fill the (empty) state server at ``connection``; return a provider of it."""
    from django_statemodes.providers.stateserver import StateServerProvider

    provider = StateServerProvider(connection=connection, application="bench-user-index")
    # The asyncio client sends a loop's requests on one connection without waiting for each
    # reply: a batch of sessions costs about one round trip, not one per request.
    client = provider.aclient("0")  # one server: every key's client

    async def store(i: int) -> None:
        key = f"{i:032d}"
        await client.set_and_release(key, PAYLOAD, lock_id=None, timeout=TIMEOUT, new_item=True)
        await client.bind_user(key, f"u{i}", ip=IP, user_agent=USER_AGENT)

    async def fill() -> None:
        try:
            for start in range(0, count, BATCH):
                await asyncio.gather(*(store(i) for i in range(start, min(count, start + BATCH))))
        finally:
            await client.aclose()

    asyncio.run(fill())
    return provider


@contextmanager
def own_stateserver() -> Iterator[str]:
    """A state server of the listing's own (its default --max-memory): its connection string."""
    port = free_port()
    with running(python_module("django_statemodes.stateserver", "--port", str(port)), port):
        yield f"tcpip=127.0.0.1:{port}"


def fill_redis(count: int) -> Any:
    """Store ``count`` bound sessions in Redis as RedisProvider does; return a provider.

    The keys and fields are RedisProvider's (see its module): a hash per session with the
    fields of a new item (its ``_SET``) and of a binding (``_BIND``), the item's Redis TTL of
    timeout + end_grace, a member in the expiry set scored by the expiry, and a set per user
    (``_INDEX``) living as long as its session.
    """
    from django_redis import get_redis_connection

    from django_statemodes.providers.redis import RedisProvider

    provider = RedisProvider(cache_alias="redis", key_prefix=REDIS_PREFIX)
    remove_redis()
    client = get_redis_connection("redis")
    seconds, micros = client.time()
    now = seconds * 1000 + micros // 1000  # the provider's clock: the server's, in ms
    expires = now + TIMEOUT * 1000
    lives = (TIMEOUT + provider.end_grace) * 1000
    for start in range(0, count, BATCH):
        pipe = client.pipeline(transaction=False)
        members: dict[str, int] = {}
        for i in range(start, min(count, start + BATCH)):
            key = f"{i:032d}"
            item = f"{provider.namespace}s:{{{key}}}"
            user_set = f"{provider.namespace}u:{{u{i}}}"
            pipe.execute_command(
                "HSET", item, "d", PAYLOAD, "ex", expires, "to", TIMEOUT, "lk", "0",
                "lid", 1, "lt", 0, "in", "0", "tk", os.urandom(8).hex(),
                "u", f"u{i}", "c", now, "ls", now, "ip", IP, "ua", USER_AGENT,
            )  # fmt: skip
            pipe.execute_command("PEXPIRE", item, lives)
            pipe.execute_command("SADD", user_set, key)
            pipe.execute_command("PEXPIRE", user_set, lives)
            members[key] = expires
        pipe.zadd(provider.expiry_key, members)
        pipe.execute()
    # The layout is written by hand here: the provider itself must find what it wrote.
    if count and [info.session_key for info in provider.user_sessions("u0")] != [f"{0:032d}"]:
        raise SystemExit("redis: the fill is not what RedisProvider reads (u0 has no session)")
    return provider


def remove_redis() -> int:
    """UNLINK every key of the Redis fill (SCAN by its prefix, in batches); return how many."""
    from django_redis import get_redis_connection

    client = get_redis_connection("redis")
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{REDIS_PREFIX}:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            removed += client.unlink(*batch)
            batch = []
    if batch:
        removed += client.unlink(*batch)
    return removed


@contextmanager
def filled(name: str, count: int) -> Iterator[tuple[Any, float]]:
    """The engine's provider with ``count`` bound sessions, and the fill's time (s)."""
    with ExitStack() as stack:
        connection = stack.enter_context(own_stateserver()) if name == "stateserver" else ""
        if name == "redis":
            stack.callback(remove_redis)  # also when the fill fails halfway
        started = time.perf_counter()
        if name == "inproc":
            provider = fill_inproc(count)
        elif name == "sql-pg":
            provider = fill_sql(count)
        elif name == "redis":
            provider = fill_redis(count)
        else:
            provider = fill_stateserver(count, connection)
        seconds = time.perf_counter() - started
        stack.callback(provider.close)
        if name == "sql-pg":
            stack.callback(remove_sql, provider)  # callbacks run last first: before the close
        yield provider, seconds


def user_sessions_among(name: str, stored: int, calls: int) -> dict[str, Any]:
    with filled(name, stored) as (provider, seconds):
        keys = [f"bench{i:027d}" for i in range(5)]
        for key in keys:
            data = dict(DATA) if provider.stores_objects else b"\x00{}"
            provider.set_and_release(key, data, lock_id=None, timeout=3600, new_item=True)
            provider.bind_user(key, USER, ip="192.0.2.0", user_agent="Firefox/128")
        for _ in range(max(3, calls // 10)):
            provider.user_sessions(USER)
        timings = []
        for _ in range(calls):
            t = time.perf_counter_ns()
            found = provider.user_sessions(USER)
            timings.append((time.perf_counter_ns() - t) / 1000)
        if sorted(info.session_key for info in found) != keys:
            raise SystemExit(f"{name}: user_sessions found {found!r}")
        return {"stored": stored + 5, "median_us": statistics.median(timings), "fill_s": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--stored", default="1000,100000,1000000")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    registry.setup_django()
    chosen = []
    for engine in registry.runnable(registry.select(args.engines, registry.OURS)):
        if engine.name in ENGINES:
            chosen.append(engine)
        else:
            print(f"skipped {engine.name}: this benchmark covers {', '.join(ENGINES)}")
    results: dict[str, Any] = {}
    # The servers the cycle uses, started (the state server) or found (Redis) as by
    # benchmarks.cycle; not the SQL engine's preparation, which would drop shared tables.
    with registry.services(engine for engine in chosen if engine.database is None):
        for engine in chosen:
            results[engine.name] = run_engine(engine, args)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


def run_engine(engine: registry.Engine, args: argparse.Namespace) -> dict[str, Any]:
    """Both measurements of one engine, printed as they come."""
    if engine.name == "sql-pg":
        from django.core.management import call_command

        call_command("installsqlstate", database="pg", verbosity=0)
    cycle = request_cycle(engine, args.iterations, args.rounds)
    print(
        f"{engine.name}: request cycle, µs (median of round medians): "
        f"off {cycle['off']:.1f}, on {cycle['on']:.1f} "
        f"({cycle['on/off']:.3f}x, rounds {cycle['on/off range'][0]:.3f}"
        f"-{cycle['on/off range'][1]:.3f}), on with a touch every request "
        f"{cycle['on-touch-every-request']:.1f} ({cycle['on-touch-every-request/off']:.3f}x)"
    )
    cpu_us = cycle["cpu_us"]
    print(
        f"{engine.name}: request cycle, this process's CPU µs per cycle: "
        f"off {cpu_us['off']:.1f}, on {cpu_us['on']:.1f} ({cycle['on/off cpu']:.3f}x), "
        f"touch every request {cpu_us['on-touch-every-request']:.1f} "
        f"({cycle['on-touch-every-request/off cpu']:.3f}x)"
    )
    listing = []
    for stored in (int(n) for n in args.stored.split(",")):
        row = user_sessions_among(engine.name, stored, args.calls)
        listing.append(row)
        print(
            f"{engine.name}: user_sessions (5 sessions) among {row['stored']:,} stored: "
            f"{row['median_us']:.1f} µs (filled in {row['fill_s']:.1f} s)"
        )
    return {"cycle": cycle, "user_sessions": listing}


if __name__ == "__main__":
    main()
