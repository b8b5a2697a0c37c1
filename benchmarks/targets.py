"""The performance targets, measured side by side and judged: ``python -m benchmarks``.

Each row is a ratio (or a count) measured in several runs, every run in its own interpreter,
the engines of a run interleaved; a row gives the median over the runs, their range, and
whether the median meets the target. The measurements come from the other scripts of this
package, run with ``--json``:

- ``benchmarks.cycle``: request cycles at 1 KB and 100 KB (``--type temp`` tables), and on
  ``persisted`` tables beside Django's ``db`` engine;
- ``benchmarks.hot``: the share of HOT updates of a steady cycle load on PostgreSQL;
- ``benchmarks.middleware --routes 300``: the whole request with ours on InProc against Django's
  middleware on LocMemCache;
- ``benchmarks.session_bytes``: bytes per stored 1 KB session (Redis, and in the process);
- ``benchmarks.throughput``: req/s under gunicorn (2 sync workers) over the no-session floor.

``--quick`` runs every measurement with tiny sizes (it checks the harness, its numbers mean
little); ``--runs`` sets the number of runs (rounds for throughput and the middleware).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.results import LATEST, machine, record


@dataclass(frozen=True)
class Row:
    key: str
    measurement: str
    today: str
    target: float
    at_most: bool = True  # False: the measured value must be at least the target
    busy_target: float | None = None  # a looser target for a busy machine
    unit: str = ""  # "%": shown as +x % over 1.0; "B": bytes


ROWS = [
    Row("ss-1k", "StateServer / Django cache on django-redis, 1 KB", "0.30", 0.25, busy_target=0.4),
    Row("ss-100k", "StateServer / Django cache on django-redis, 100 KB", "1.34", 0.6),
    Row("redis-100k", "Redis provider / Django cache on django-redis, 100 KB", "1.76", 0.8),
    Row("ss-floor", "StateServer / same-loop KV floor with serialization, 1 KB", "~1.9", 1.5),
    Row("sql-floor", "SQL on PG / UNLOGGED psycopg floor, 1 KB", "2.98-3.26", 2.0),
    Row("sql-persisted", "SQL on PG, persisted / Django `db`", "0.49-0.51", 0.3),
    Row(
        "hot",
        "share of HOT updates in a steady cycle load (PostgreSQL)",
        "0 %",
        0.9,
        at_most=False,
        unit="share",
    ),
    Row(
        "middleware",
        "ours + InProc / Django middleware + LocMemCache, 300 routes, per request",
        "+45-58 %",
        1.05,
        unit="%",
    ),
    Row("redis-bytes", "Redis bytes per 1 KB session", "1,800", 1000, unit="B"),
    Row("inproc-bytes", "InProc bytes per 1 KB session / LocMemCache", "4.9x", 2.0),
    Row(
        "http-ss", "HTTP req/s / no-session floor, gunicorn 2 sync: StateServer", "0.48", 0.6, False
    ),
    Row("http-redis", "HTTP req/s / no-session floor, gunicorn 2 sync: Redis", "0.40", 0.5, False),
    Row("http-sql", "HTTP req/s / no-session floor, gunicorn 2 sync: SQL", "0.38", 0.5, False),
]

#: Extra rows, without a target of the issue: context for the ones above. The floors bound
#: what any engine can reach on the machine: a store that does no session work at all (the KV
#: floor) against django-redis bounds the first row from below; over HTTP, two round trips to
#: that store, by hand or under Django's SessionMiddleware, bound the HTTP rows from above, and
#: the same work by hand with redis-py or psycopg bounds the Redis or SQL row.
CONTEXT = [
    ("ss-1k-floor", "same-loop KV floor / Django cache on django-redis, 1 KB"),
    ("sql-persisted-floor", "SQL on PG, persisted / logged psycopg floor, 1 KB"),
    ("http-django-redis", "HTTP req/s / no-session floor: Django cache on django-redis"),
    ("http-kv-floor", "HTTP req/s / no-session floor: two round trips to the KV floor, by hand"),
    (
        "http-kv-session",
        "HTTP req/s / no-session floor: Django's SessionMiddleware on the KV floor",
    ),
    ("http-redis-floor", "HTTP req/s / no-session floor: GET + SET on Redis, by hand"),
    ("http-pg-floor", "HTTP req/s / no-session floor: SELECT + upsert on PG, by hand"),
    ("redis-bytes-listpack", "Redis bytes per 1 KB session, hash-max-listpack-value 2048"),
]
#: The context rows that are not ratios (``shown``'s units).
CONTEXT_UNITS = {"redis-bytes-listpack": "B"}


@dataclass
class Settings:
    runs: int
    cycle_iterations: int
    cycle_rounds: int
    hot_sessions: int
    hot_cycles: int
    middleware_iterations: int
    session_count: int
    http_duration: int


FULL = Settings(3, 1000, 10, 50, 20, 5000, 10_000, 5)
QUICK = Settings(3, 20, 2, 5, 4, 100, 200, 1)


def script(name: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any] | str:
    """Run ``python -m benchmarks.<name> ... --json FILE``; its data, or why it failed."""
    handle, path = tempfile.mkstemp(suffix=".json", prefix=f"statemodes-{name}-")
    os.close(handle)
    try:
        done = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{name}", *args, "--json", path],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
        )
        text = Path(path).read_text()
        if done.returncode != 0 or not text:
            lines = (done.stderr or done.stdout).strip().splitlines()
            reason = (lines[-1] if lines else f"exit {done.returncode}")[:200]
            print(f"benchmarks.{name} failed, this run is left out: {reason}", flush=True)
            return reason
        data: dict[str, Any] = json.loads(text)
        if done.stdout.strip():
            print(done.stdout.rstrip(), flush=True)
        return data
    finally:
        os.unlink(path)


def ratio(result: dict[str, Any], size: int, engine: str, baseline: str) -> float | None:
    for row in result["payloads"].get(str(size), {}).get("ratios", []):
        if (row["engine"], row["baseline"]) == (engine, baseline):
            value: float = row["ratio"]
            return value
    return None


def median_ratio(result: dict[str, Any], size: int, engine: str, baseline: str) -> float | None:
    """The ratio of two engines' medians in one cycle run (for pairs the run does not judge)."""
    engines = result["payloads"].get(str(size), {}).get("engines", {})
    if engine not in engines or baseline not in engines:
        return None
    value: float = engines[engine]["median"] / engines[baseline]["median"]
    return value


Values = dict[str, list[float]]


def collect(values: Values, key: str, value: float | None) -> None:
    if value is not None:
        values.setdefault(key, []).append(value)


def measure_cycles(s: Settings, serializer: str, values: Values, why: dict[str, str]) -> None:
    common = ["--iterations", str(s.cycle_iterations), "--rounds", str(s.cycle_rounds)]
    common += ["--serializer", serializer, "--no-save"]
    for run in range(s.runs):
        print(f"-- cycle, temp tables, run {run + 1}/{s.runs}", flush=True)
        result = script(
            "cycle",
            *("--engines", "stateserver,redis,sql-pg"),
            *("--baselines", "django-cache-redis,floor-asyncio-kv,floor-psycopg"),
            *("--payloads", "1000,100000", *common),
            *(() if run == 0 else ("--no-round-trips",)),
        )
        if isinstance(result, str):
            for key in ("ss-1k", "ss-100k", "redis-100k", "ss-floor", "sql-floor"):
                why[key] = result
            continue
        collect(values, "ss-1k", ratio(result, 1000, "stateserver", "django-cache-redis"))
        collect(values, "ss-100k", ratio(result, 100_000, "stateserver", "django-cache-redis"))
        collect(values, "redis-100k", ratio(result, 100_000, "redis", "django-cache-redis"))
        collect(values, "ss-floor", ratio(result, 1000, "stateserver", "floor-asyncio-kv"))
        collect(
            values,
            "ss-1k-floor",
            median_ratio(result, 1000, "floor-asyncio-kv", "django-cache-redis"),
        )
        collect(values, "sql-floor", ratio(result, 1000, "sql-pg", "floor-psycopg"))
    for run in range(s.runs):
        print(f"-- cycle, persisted tables, run {run + 1}/{s.runs}", flush=True)
        result = script(
            "cycle",
            *("--engines", "sql-pg", "--baselines", "django-db-pg,floor-psycopg"),
            *("--payloads", "1000", "--no-round-trips", *common),
            env={"STATEMODES_BENCH_SQL_TYPE": "persisted"},
        )
        if isinstance(result, str):
            why["sql-persisted"] = why["sql-persisted-floor"] = result
            continue
        collect(values, "sql-persisted", ratio(result, 1000, "sql-pg", "django-db-pg"))
        collect(values, "sql-persisted-floor", ratio(result, 1000, "sql-pg", "floor-psycopg"))


def measure_hot(s: Settings, values: Values, why: dict[str, str]) -> None:
    for run in range(s.runs):
        print(f"-- HOT updates, run {run + 1}/{s.runs}", flush=True)
        result = script("hot", "--sessions", str(s.hot_sessions), "--cycles", str(s.hot_cycles))
        if isinstance(result, str):
            why["hot"] = result
            continue
        collect(values, "hot", result["hot_share"])


def measure_middleware(s: Settings, values: Values, why: dict[str, str]) -> None:
    print(f"-- middleware, 300 routes, {s.runs} rounds", flush=True)
    result = script(
        "middleware",
        *("--routes", "300", "--iterations", str(s.middleware_iterations)),
        *("--rounds", str(s.runs)),
    )
    if isinstance(result, str):
        why["middleware"] = result
        return
    for value in result["whole_request_ratio"]["this tree"]:
        collect(values, "middleware", value)


def measure_bytes(s: Settings, values: Values, why: dict[str, str]) -> None:
    for run in range(s.runs):
        print(f"-- bytes per session, run {run + 1}/{s.runs}", flush=True)
        result = script("session_bytes", "--sessions", str(s.session_count))
        if isinstance(result, str):
            why["redis-bytes"] = why["inproc-bytes"] = result
            continue
        if "redis" in result:
            collect(values, "redis-bytes", result["redis"]["bytes-redis"])
            collect(values, "redis-bytes-listpack", result["redis"]["bytes-redis-listpack"])
        else:
            why["redis-bytes"] = why["redis-bytes-listpack"] = "redis-server is not installed"
        inproc = result["inproc"]
        collect(
            values, "inproc-bytes", inproc["bytes-inproc"] / inproc["bytes-django-cache-locmem"]
        )


def measure_http(s: Settings, values: Values, why: dict[str, str]) -> None:
    print(f"-- HTTP throughput, {s.runs} rounds", flush=True)
    result = script(
        "throughput",
        *("--engines", "stateserver,redis,sql-pg", "--baselines", "django-cache-redis"),
        *("--rounds", str(s.runs), "--duration", str(s.http_duration), "--no-save"),
    )
    keys = {
        "stateserver": "http-ss",
        "redis": "http-redis",
        "sql-pg": "http-sql",
        "django-cache-redis": "http-django-redis",
        "floor-asyncio-kv": "http-kv-floor",
        "floor-kv-session": "http-kv-session",
        "floor-redis-py": "http-redis-floor",
        "floor-psycopg": "http-pg-floor",
    }
    if isinstance(result, str):
        for key in keys.values():
            why[key] = result
        return
    for engine, key in keys.items():
        row = result["engines"].get(engine)
        if row is None:
            why[key] = f"{engine} did not run"
            continue
        for value in row["ratio_to_none"]:
            collect(values, key, value)


def shown(value: float, unit: str) -> str:
    if unit == "%":
        return f"{(value - 1) * 100:+.0f} %"
    if unit == "B":
        return f"{value:,.0f}"
    if unit == "share":
        return f"{value:.1%}"
    return f"{value:.2f}"


def spread_text(got: list[float], unit: str) -> str:
    """Median (min-max), runs: how every row of the table gives its values."""
    low, median, high = min(got), statistics.median(got), max(got)
    return f"{shown(median, unit)} ({shown(low, unit)}-{shown(high, unit)}), {len(got)}"


def verdict(row: Row, median: float) -> str:
    if row.at_most:
        if median <= row.target:
            return "met"
        if row.busy_target is not None and median <= row.busy_target:
            return f"met busy (≤ {row.busy_target}), not idle"
        return "not met"
    return "met" if median >= row.target else "not met"


def target_text(row: Row) -> str:
    sign = "≤" if row.at_most else "≥"
    text = f"{sign} {shown(row.target, row.unit)}"
    if row.busy_target is not None:
        text += f", ≤ {row.busy_target} busy"
    return text


def table(values: Values, why: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
    lines = [
        "| measurement | today (issue) | measured: median (min-max), runs | target | verdict |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    rows: list[dict[str, Any]] = []
    for row in ROWS:
        got = values.get(row.key, [])
        if not got:
            reason = why.get(row.key, "not measured")
            lines.append(
                f"| {row.measurement} | {row.today} | - | {target_text(row)} | "
                f"not measured: {reason} |"
            )
            rows.append({"key": row.key, "values": [], "verdict": "not measured"})
            continue
        median = statistics.median(got)
        judged = verdict(row, median)
        spread = spread_text(got, row.unit)
        lines.append(
            f"| {row.measurement} | {row.today} | {spread} | {target_text(row)} | {judged} |"
        )
        rows.append({"key": row.key, "values": got, "median": median, "verdict": judged})
    for key, label in CONTEXT:
        got = values.get(key, [])
        if got:
            median = statistics.median(got)
            spread = spread_text(got, CONTEXT_UNITS.get(key, ""))
            lines.append(f"| {label} | | {spread} | | (context) |")
            rows.append({"key": key, "values": got, "median": median})
    return "\n".join(lines), rows


STEPS: dict[str, Callable[[Settings, str, Values, dict[str, str]], None]] = {
    "cycle": measure_cycles,
    "hot": lambda s, _, v, w: measure_hot(s, v, w),
    "middleware": lambda s, _, v, w: measure_middleware(s, v, w),
    "bytes": lambda s, _, v, w: measure_bytes(s, v, w),
    "http": lambda s, _, v, w: measure_http(s, v, w),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness")
    parser.add_argument("--runs", type=int, help="runs per measurement (default 3)")
    parser.add_argument(
        "--serializer",
        choices=("django", "fast"),
        default="fast" if importlib.util.find_spec("orjson") else "django",
        help="SESSION_SERIALIZER of the cycle runs (default: fast when orjson is installed)",
    )
    parser.add_argument("--only", default=",".join(STEPS), help="measurements to run (default all)")
    parser.add_argument("--no-save", action="store_true", help="do not write results/latest.json")
    args = parser.parse_args(argv)
    chosen = QUICK if args.quick else FULL
    if args.runs:
        chosen.runs = args.runs
    values: Values = {}
    why: dict[str, str] = {}
    started = time.monotonic()
    for step in args.only.split(","):
        if step not in STEPS:
            raise SystemExit(f"unknown measurement {step!r}; known: {', '.join(STEPS)}")
        STEPS[step](chosen, args.serializer, values, why)
    text, rows = table(values, why)
    load = os.getloadavg()
    about = machine() | {"load_average": [round(x, 2) for x in load]}
    print(
        f"\nTargets{' (--quick: a harness check, not a measurement)' if args.quick else ''}: "
        f"{chosen.runs} runs each, serializer {args.serializer}, "
        f"{about['cpu']}, {about['cores']} cores, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}, {time.monotonic() - started:.0f} s\n"
    )
    print(text)
    if not args.no_save and not args.quick:
        record(
            "targets",
            {
                "serializer": args.serializer,
                "runs": chosen.runs,
                "rows": rows,
                "load_average": about["load_average"],
                "table": text,
            },
            LATEST,
        )


if __name__ == "__main__":
    main()
