"""The index of sessions by user: its cost on the request cycle, and listing one user's sessions.

Two measurements, per engine (``inproc``, ``sql-pg``):

- **The request cycle** of a signed-in session (load with the lock, change a value, save and
  release: ``benchmarks.cycle``'s cycle), with ``STATEMODES_USER_INDEX`` off, on (the default
  ``STATEMODES_USER_INDEX_INTERVAL``, so "last seen" is almost never due), and on with an
  interval of 0 (a "last seen" write on every request: the worst case). Interleaved rounds, as
  ``benchmarks.cycle`` runs them; the ratio is taken from the medians.
- **``user_sessions``** of a user with 5 sessions among N stored sessions, each of the others
  bound to a user of its own: the time must not grow with N.

SQL fills its table with one ``INSERT ... SELECT generate_series`` under an application name of
its own (removed afterwards), so other applications' rows are untouched; the tables are
installed (or upgraded) with ``installsqlstate``, never dropped.

Run: ``python -m benchmarks.user_index [--engines inproc,sql-pg] [--iterations N]
[--stored 1000,100000,1000000] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks import engines as registry

ENGINES = ("inproc", "sql-pg")
USER = "bench-user-5"
#: The sessions' data: a signed-in user with a small cart (the cycle increments ``counter``).
DATA = {
    "_auth_user_id": "42",
    "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
    "_auth_user_hash": "0" * 64,
    "counter": 0,
    "cart": [{"sku": f"SKU-{i}", "qty": 1} for i in range(10)],
}
MODES: dict[str, dict[str, Any]] = {
    "off": {"STATEMODES_USER_INDEX": False},
    "on": {"STATEMODES_USER_INDEX": True, "STATEMODES_USER_INDEX_INTERVAL": 300},
    "on-touch-every-request": {
        "STATEMODES_USER_INDEX": True,
        "STATEMODES_USER_INDEX_INTERVAL": 0,
    },
}


def cycle_of(store_class: type[Any]) -> Callable[[], None]:
    """A signed-in session's request cycle; the session is bound when the index is on."""
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

    return cycle


def request_cycle(engine: registry.Engine, iterations: int, rounds: int) -> dict[str, Any]:
    from django.test.utils import override_settings

    store_class = registry.store_class(engine)
    registry.use(engine)
    cycle = cycle_of(store_class)
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


def user_sessions_among(name: str, stored: int, calls: int) -> dict[str, Any]:
    started = time.perf_counter()
    provider = fill_inproc(stored) if name == "inproc" else fill_sql(stored)
    filled = time.perf_counter() - started
    try:
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
        return {"stored": stored + 5, "median_us": statistics.median(timings), "fill_s": filled}
    finally:
        if name == "sql-pg":
            remove_sql(provider)
        provider.close()


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
    chosen = registry.runnable(registry.select(args.engines, registry.OURS))
    results: dict[str, Any] = {}
    for engine in chosen:
        if engine.name not in ENGINES:
            print(f"skipped {engine.name}: this benchmark covers {', '.join(ENGINES)}")
            continue
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
        results[engine.name] = {"cycle": cycle, "user_sessions": listing}
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
