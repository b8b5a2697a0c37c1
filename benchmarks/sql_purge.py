"""SQL-mode purge benchmark: ``purge_sessions`` against ``clearsessions`` on PostgreSQL.

Two tables of 1,000,000 rows each, 500,000 of them expired, in a scratch database (created and
dropped here, so tests are never disturbed): Django's ``django_session`` emptied by
``clearsessions`` (one DELETE), and ``ASPStateTempSessions`` (persisted, so both are WAL-logged)
emptied by our batched purge. While our purge runs, a thread keeps doing request cycles (lock
and load, save and release) on live sessions; their p99 latency is compared with the same
loop before the purge. Targets (DESIGN.md §5): rate at least 0.7x clearsessions, no batch
(transaction) over 1 s, live p99 within 2x of idle.

Run: ``python -m benchmarks.sql_purge [--rows 1000000] [--batch-size 5000] [--type persisted]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from typing import Any

import django
import psycopg
from django.conf import settings

SCRATCH = "statemodes_purge_bench"
PAYLOAD_BYTES = 256
# Every row its own expiry (sessions end one by one), half in the past: the same in both tables.
EXPIRES = (
    "now() + CASE WHEN i %% 2 = 0 THEN interval '-2 hours' ELSE interval '1 day' END "
    "+ i * interval '1 millisecond'"
)


def configure() -> None:
    settings.configure(
        SECRET_KEY="bench",
        USE_TZ=True,
        INSTALLED_APPS=["django.contrib.sessions", "django_statemodes"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": SCRATCH,
                "USER": "root",
                "HOST": "127.0.0.1",
                "PORT": "5432",
            }
        },
        SESSION_ENGINE="django_statemodes.backends.sql",
        STATEMODES_SQL_DATABASE="default",
    )
    django.setup()


def admin(sql: str) -> None:
    with psycopg.connect(host="127.0.0.1", user="root", dbname="test", autocommit=True) as conn:
        conn.execute(sql)


def load(rows: int, table_type: str) -> None:
    """Fill both tables: half expired an hour ago, half live for a day."""
    from django.core.management import call_command
    from django.db import connection

    from django_statemodes.sqlstate import schema

    call_command("migrate", "sessions", verbosity=0)
    call_command("installsqlstate", type=table_type, verbosity=0)
    suffix = schema.app_suffix(schema.app_id("default"))
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_session (session_key, session_data, expire_date) "
            "SELECT md5(i::text), repeat('x', %s), "
            f"{EXPIRES} FROM generate_series(1, %s) AS i",
            [PAYLOAD_BYTES, rows],
        )
        cursor.execute(
            'INSERT INTO "ASPStateTempSessions" ("SessionId", "Created", "Expires", "LockDate", '
            '"LockDateLocal", "LockCookie", "Timeout", "Locked", "SessionItemShort", "Flags") '
            "SELECT md5(i::text) || %s, now(), "
            f"{EXPIRES}, now(), localtimestamp, 1, 86400, false, convert_to(repeat('x', %s), 'UTF8'), 0 "
            "FROM generate_series(1, %s) AS i",
            [suffix, PAYLOAD_BYTES, rows],
        )
        cursor.execute('VACUUM ANALYZE django_session, "ASPStateTempSessions"')
        cursor.execute("CHECKPOINT")


def live_cycles(keys: list[str], stop: Any, out: Any) -> None:
    """Request cycles on live sessions until ``stop``: lock+load, change, save+release.

    Runs in its own process, as a web worker does (the purge runs from cron).
    """
    configure()
    from django_statemodes.backends.sql import SessionStore

    i = 0
    while not stop.is_set():
        started = time.perf_counter()
        store = SessionStore(keys[i % len(keys)], access="ReadWrite")
        store["n"] = store.get("n", 0) + 1
        store.finish(save=True)
        out.append(time.perf_counter() - started)
        i += 1
        time.sleep(0.002)  # a steady request stream, not a saturating one


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


def run(rows: int, batch_size: int, table_type: str) -> dict[str, Any]:
    from django.contrib.sessions.backends.db import SessionStore as DjangoDb
    from django.db import connection

    from django_statemodes.backends.sql import SessionStore

    load(rows, table_type)
    expired = rows // 2

    started = time.perf_counter()
    DjangoDb.clear_expired()
    clear_seconds = time.perf_counter() - started
    connection.cursor().execute("CHECKPOINT")

    keys = []
    for _ in range(20):
        store = SessionStore(access="ReadWrite")
        store["n"] = 0
        store.finish(save=True)
        keys.append(store.session_key)
    ctx = multiprocessing.get_context("spawn")
    manager = ctx.Manager()
    idle_samples = manager.list()
    stop = ctx.Event()
    worker = ctx.Process(target=live_cycles, args=(keys, stop, idle_samples))
    worker.start()
    time.sleep(4.0)
    stop.set()
    worker.join()
    idle = list(idle_samples)[50:]  # past the worker's warm-up

    during_samples = manager.list()
    stop = ctx.Event()
    worker = ctx.Process(target=live_cycles, args=(keys, stop, during_samples))
    worker.start()
    time.sleep(1.0)  # warmed up
    warm = len(during_samples)
    provider = SessionStore.get_provider()
    marks = [time.perf_counter()]
    purged = provider.purge_expired(
        batch_size=batch_size, on_batch=lambda total: marks.append(time.perf_counter())
    )
    purge_seconds = marks[-1] - marks[0]
    during = list(during_samples)[warm:]
    stop.set()
    worker.join()
    batches = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    assert purged == expired, (purged, expired)
    return {
        "rows": rows,
        "table_type": table_type,
        "expired": expired,
        "payload_bytes": PAYLOAD_BYTES,
        "clearsessions_seconds": round(clear_seconds, 3),
        "clearsessions_rows_per_s": round(expired / clear_seconds),
        "purge_seconds": round(purge_seconds, 3),
        "purge_rows_per_s": round(expired / purge_seconds),
        "rate_vs_clearsessions": round(clear_seconds / purge_seconds, 2),
        "batch_size": batch_size,
        "batches": len(batches),
        "longest_batch_seconds": round(max(batches), 4),
        "median_batch_seconds": round(statistics.median(batches), 4),
        "live_cycles_idle": len(idle),
        "live_cycles_during": len(during),
        "live_p99_idle_ms": round(p99(idle) * 1000, 3),
        "live_p99_during_ms": round(p99(during) * 1000, 3),
        "live_p99_ratio": round(p99(during) / p99(idle), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--type", choices=["temp", "persisted"], default="persisted")
    args = parser.parse_args()
    os.environ.setdefault("STATEMODES_DJANGO_TESTS", "0")
    admin(f"DROP DATABASE IF EXISTS {SCRATCH}")
    admin(f"CREATE DATABASE {SCRATCH}")
    configure()
    try:
        result = run(args.rows, args.batch_size, args.type)
    finally:
        from django.db import connections

        from django_statemodes.backends.base import _providers

        for provider in list(_providers.values()):
            provider.close()
        connections.close_all()
        admin(f"DROP DATABASE IF EXISTS {SCRATCH}")
    print(json.dumps(result, indent=2))
    ok = (
        result["rate_vs_clearsessions"] >= 0.7
        and result["longest_batch_seconds"] < 1.0
        and result["live_p99_ratio"] <= 2.0
    )
    print("targets:", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
