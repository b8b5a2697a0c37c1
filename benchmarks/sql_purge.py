"""SQL-mode purge benchmark: ``purge_sessions`` against ``clearsessions``, on PostgreSQL or MariaDB.

Two tables of 1,000,000 rows each, 500,000 of them expired, in a scratch database (created and
dropped here, so tests are never disturbed): Django's ``django_session`` emptied by
``clearsessions`` (one DELETE), and ``ASPStateTempSessions`` emptied by our batched purge, of
``installsqlstate``'s default ``--type temp`` (UNLOGGED: no WAL, as ASP.NET's tempdb default) or
``--type persisted`` (WAL-logged, as ``django_session`` always is). Both are run ``--repeats``
times (the expired half is put back in between) and their median times compared. Throughout, a
separate process keeps doing request cycles (lock and load, save and release) on live sessions at a
steady rate; the p99 latency of those that start during our purges is compared with those that
start in quiet windows (two seconds before each purge, nothing else running), pooled over the
repeats. Targets (DESIGN.md §5): rate at least 0.7x clearsessions, no batch (transaction) over 1 s,
live p99 within 2x of idle. The p99 of the requests that start during ``clearsessions`` is
reported beside it, for context.

On MariaDB (``--database mariadb``, the server at 127.0.0.1:3306) both tables are InnoDB, as
``installsqlstate`` makes them whatever ``--type`` says.

Run: ``python -m benchmarks.sql_purge [--database postgresql|mariadb] [--rows 1000000]
[--batch-size N] [--type temp|persisted] [--repeats 3] [--pause FRACTION] [--live-pause 0.001]
[--no-save]``
"""

from __future__ import annotations

import argparse
import array
import json
import multiprocessing
import os
import statistics
import time
from typing import Any

import django
import psycopg
from django.conf import settings

from benchmarks import results

SCRATCH = "statemodes_purge_bench"
PAYLOAD_BYTES = 256
COLUMNS = (
    '"SessionId", "Created", "Expires", "LockDate", "LockDateLocal", "LockCookie", "Timeout", '
    '"Locked", "SessionItemShort", "Flags"'
)


class Dialect:
    """What differs between the two databases: connection, row generation, maintenance."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mariadb = name == "mariadb"

    def database(self) -> dict[str, Any]:
        if self.mariadb:
            return {"ENGINE": "django.db.backends.mysql", "NAME": SCRATCH, "USER": "root",
                    "HOST": "127.0.0.1", "PORT": "3306"}  # fmt: skip
        return {"ENGINE": "django.db.backends.postgresql", "NAME": SCRATCH, "USER": "root",
                "HOST": "127.0.0.1", "PORT": "5432"}  # fmt: skip

    def admin(self, sql: str) -> None:
        if self.mariadb:
            import MySQLdb

            conn = MySQLdb.connect(host="127.0.0.1", user="root", database="test")
            try:
                conn.cursor().execute(sql)
            finally:
                conn.close()
            return
        with psycopg.connect(host="127.0.0.1", user="root", dbname="test", autocommit=True) as c:
            c.execute(sql)

    def expires(self, expired_only: bool) -> str:
        """Every row its own expiry (sessions end one by one); half in the past, or all."""
        if self.mariadb:
            base, step = "UTC_TIMESTAMP(6)", "INTERVAL i * 1000 MICROSECOND"
            if expired_only:
                return f"{base} - INTERVAL 2 HOUR + {step}"
            return f"{base} + INTERVAL IF(MOD(i, 2) = 0, -7200, 86400) SECOND + {step}"
        past, future = "interval '-2 hours'", "interval '1 day'"
        if expired_only:
            return f"now() + {past} + i * interval '1 millisecond'"
        return (
            f"now() + CASE WHEN i %% 2 = 0 THEN {past} ELSE {future} END "
            "+ i * interval '1 millisecond'"
        )

    def rows(self, first: int, last: int, step: int) -> str:
        """A FROM clause of integers i from ``first`` to ``last`` by ``step``."""
        if self.mariadb:  # MariaDB's SEQUENCE engine
            return f"(SELECT seq AS i FROM seq_{first}_to_{last}_step_{step}) AS numbers"
        return f"generate_series({first}, {last}, {step}) AS i"

    def fill(self, cursor: Any, rows: str, expires: str, prefix: str, suffix: str) -> None:
        """Insert the generated rows into both tables (``prefix`` makes keys new)."""
        if self.mariadb:
            key, now, local = "md5(concat(%s, i))", "UTC_TIMESTAMP(6)", "NOW(6)"
            payload, table = "repeat('x', %s)", "ASPStateTempSessions"
            columns = COLUMNS.replace('"', "`")
        else:
            key, now, local = "md5(%s || i::text)", "now()", "localtimestamp"
            payload, table = "convert_to(repeat('x', %s), 'UTF8')", '"ASPStateTempSessions"'
            columns = COLUMNS
        cursor.execute(
            "INSERT INTO django_session (session_key, session_data, expire_date) "
            f"SELECT {key}, repeat('x', %s), {expires} FROM {rows}",
            [prefix, PAYLOAD_BYTES],
        )
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT concat({key}, %s), {now}, {expires}, {now}, {local}, 1, 86400, "
            f"false, {payload}, 0 FROM {rows}",
            [prefix, suffix, PAYLOAD_BYTES],
        )

    def settle(self, cursor: Any) -> None:
        """Fresh statistics and a clean start: nothing left to flush from the load."""
        if self.mariadb:
            cursor.execute("ANALYZE TABLE django_session, ASPStateTempSessions")
            cursor.fetchall()
            return
        cursor.execute('VACUUM ANALYZE django_session, "ASPStateTempSessions"')
        cursor.execute("CHECKPOINT")

    def checkpoint(self, cursor: Any) -> None:
        if not self.mariadb:
            cursor.execute("CHECKPOINT")  # InnoDB has no statement for it: it flushes as it goes


DIALECT = Dialect("postgresql")


def configure() -> None:
    settings.configure(
        SECRET_KEY="bench",
        USE_TZ=True,
        INSTALLED_APPS=["django.contrib.sessions", "django_statemodes"],
        DATABASES={"default": DIALECT.database()},
        SESSION_ENGINE="django_statemodes.backends.sql",
        STATEMODES_SQL_DATABASE="default",
    )
    django.setup()


def load(rows: int, table_type: str) -> None:
    """Fill both tables: half expired two hours ago, half live for a day."""
    from django.core.management import call_command
    from django.db import connection

    from django_statemodes.providers.sql import schema

    call_command("migrate", "sessions", verbosity=0)
    call_command("installsqlstate", type=table_type, verbosity=0)
    suffix = schema.app_suffix(schema.app_id("default"))
    with connection.cursor() as cursor:
        DIALECT.fill(cursor, DIALECT.rows(1, rows, 1), DIALECT.expires(False), "", suffix)
        DIALECT.settle(cursor)


def refill(rows: int, suffix: str, generation: int) -> None:
    """Put back the expired half of both tables under new keys (the live half stayed)."""
    from django.db import connection

    with connection.cursor() as cursor:
        rows_sql = DIALECT.rows(2, rows, 2)
        DIALECT.fill(cursor, rows_sql, DIALECT.expires(True), f"g{generation}-", suffix)
        DIALECT.settle(cursor)


def live_cycles(database: str, keys: list[str], stop: Any, out: Any, pause: float) -> None:
    """Request cycles on live sessions until ``stop``: lock+load, change, save+release.

    Runs in its own process, as a web worker does (the purge runs from cron), at one steady
    rate throughout, so idle and during-purge samples come from the same request mix. Each
    sample is (start on the system-wide monotonic clock, seconds taken).
    """
    global DIALECT
    DIALECT = Dialect(database)  # a spawned process starts from the module's default
    configure()
    from django_statemodes.backends.sql import SessionStore

    i = 0
    # Plain arrays of floats: a list of tuples would grow the garbage collector's heap by ~1,000
    # objects a second, and its collections would land in the very requests being timed.
    starts, took = array.array("d"), array.array("d")
    while not stop.is_set():
        started = time.monotonic()
        store = SessionStore(keys[i % len(keys)], access="ReadWrite")
        store["n"] = store.get("n", 0) + 1
        store.finish(save=True)
        starts.append(started)
        took.append(time.monotonic() - started)
        i += 1
        time.sleep(pause)  # a steady request stream, not a saturating one
    out.extend(zip(starts, took, strict=True))


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


def within(samples: list[tuple[float, float]], windows: list[tuple[float, float]]) -> list[float]:
    """Durations of the requests that started inside one of ``windows``."""
    return [took for at, took in samples if any(a <= at < b for a, b in windows)]


def run(
    rows: int,
    batch_size: int | None,
    table_type: str,
    repeats: int,
    pause: float | None,
    live_pause: float,
) -> dict[str, Any]:
    from django.contrib.sessions.backends.db import SessionStore as DjangoDb
    from django.db import connection

    from django_statemodes.backends.sql import SessionStore
    from django_statemodes.conf import conf
    from django_statemodes.providers.sql import SQLStateProvider, schema

    load(rows, table_type)
    suffix = schema.app_suffix(schema.app_id("default"))
    expired = rows // 2

    keys = []
    for _ in range(20):
        store = SessionStore(access="ReadWrite")
        store["n"] = 0
        store.finish(save=True)
        keys.append(store.session_key)
    ctx = multiprocessing.get_context("spawn")
    manager = ctx.Manager()
    samples = manager.list()
    stop = ctx.Event()
    worker = ctx.Process(target=live_cycles, args=(DIALECT.name, keys, stop, samples, live_pause))
    worker.start()
    time.sleep(2.0)  # the worker is up and warm

    provider = SessionStore.get_provider()
    # Pacing is the SQL provider's own knob (SQLStateProvider.purge_pause), not the contract's.
    assert isinstance(provider, SQLStateProvider)
    if pause is not None:
        provider.purge_pause = pause
    clears: list[float] = []
    purges: list[float] = []
    batches: list[float] = []
    idle_windows: list[tuple[float, float]] = []
    purge_windows: list[tuple[float, float]] = []
    clear_windows: list[tuple[float, float]] = []
    marks: list[float] = []
    for generation in range(repeats):
        if generation:
            refill(rows, suffix, generation)
        # Both purges run under the same live load; clearsessions first, then a quiet pause.
        begun, started = time.monotonic(), time.perf_counter()
        DjangoDb.clear_expired()
        clears.append(time.perf_counter() - started)
        clear_windows.append((begun, time.monotonic()))
        DIALECT.checkpoint(connection.cursor())
        quiet = time.monotonic()
        time.sleep(2.0)
        idle_windows.append((quiet, time.monotonic()))
        marks[:] = [time.perf_counter()]
        begun = time.monotonic()
        purged = provider.purge_expired(
            batch_size=batch_size, on_batch=lambda total: marks.append(time.perf_counter())
        )
        purge_windows.append((begun, time.monotonic()))
        purges.append(marks[-1] - marks[0])
        batches += [b - a for a, b in zip(marks, marks[1:], strict=False)]
        assert purged == expired, (purged, expired)
    stop.set()
    worker.join()
    collected = list(samples)  # one copy out of the manager process, not one per window set
    idle = within(collected, idle_windows)
    during = within(collected, purge_windows)
    clearing = within(collected, clear_windows)
    clear_seconds = statistics.median(clears)
    purge_seconds = statistics.median(purges)
    return {
        "database": DIALECT.name,
        "rows": rows,
        "table_type": table_type,
        "expired": expired,
        "payload_bytes": PAYLOAD_BYTES,
        "repeats": repeats,
        "clearsessions_seconds": [round(x, 3) for x in clears],
        "clearsessions_rows_per_s": round(expired / clear_seconds),
        "purge_seconds": [round(x, 3) for x in purges],
        "purge_rows_per_s": round(expired / purge_seconds),
        "rate_vs_clearsessions": round(clear_seconds / purge_seconds, 2),
        "batch_size": batch_size or conf.STATEMODES_PURGE_BATCH_SIZE,
        "purge_pause": provider.purge_pause,
        "batches": len(batches),
        "longest_batch_seconds": round(max(batches), 4),
        "median_batch_seconds": round(statistics.median(batches), 4),
        "live_cycles_idle": len(idle),
        "live_cycles_during": len(during),
        "live_median_idle_ms": round(statistics.median(idle) * 1000, 3),
        "live_median_during_ms": round(statistics.median(during) * 1000, 3),
        "live_p99_idle_ms": round(p99(idle) * 1000, 3),
        "live_p99_during_ms": round(p99(during) * 1000, 3),
        "live_p99_ratio": round(p99(during) / p99(idle), 2),
        # Context, not a target: the same live requests while clearsessions' one DELETE runs.
        "live_cycles_clearsessions": len(clearing),
        "live_p99_clearsessions_ms": round(p99(clearing) * 1000, 3),
        "live_p99_clearsessions_ratio": round(p99(clearing) / p99(idle), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["postgresql", "mariadb"], default="postgresql")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--type",
        choices=["temp", "persisted"],
        default="temp",
        help="table type of installsqlstate (default: temp, its own default)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="purges (and clearsessions) run")
    parser.add_argument(
        "--pause", type=float, default=None, help="purge_pause (default: the provider's)"
    )
    parser.add_argument(
        "--live-pause", type=float, default=0.001, help="seconds between live requests"
    )
    parser.add_argument("--no-save", action="store_true", help="do not write results/latest.json")
    args = parser.parse_args()
    os.environ.setdefault("STATEMODES_DJANGO_TESTS", "0")
    global DIALECT
    DIALECT = Dialect(args.database)
    DIALECT.admin(f"DROP DATABASE IF EXISTS {SCRATCH}")
    DIALECT.admin(f"CREATE DATABASE {SCRATCH}")
    configure()
    try:
        result = run(
            args.rows, args.batch_size, args.type, args.repeats, args.pause, args.live_pause
        )
    finally:
        from django.db import connections

        from django_statemodes.core import registry

        registry.close_all()
        connections.close_all()
        DIALECT.admin(f"DROP DATABASE IF EXISTS {SCRATCH}")
    result["targets_met"] = (
        result["rate_vs_clearsessions"] >= 0.7
        and result["longest_batch_seconds"] < 1.0
        and result["live_p99_ratio"] <= 2.0
    )
    print(json.dumps(result, indent=2))
    print("targets:", "met" if result["targets_met"] else "NOT met")
    if not args.no_save:
        results.record("sql_purge", result)


if __name__ == "__main__":
    main()
