"""Share of HOT updates in a steady cycle load of SQL mode on PostgreSQL.

A HOT (heap-only tuple) update changes no indexed column and finds room in its page: it adds no
index entry and leaves no dead index entry for vacuum. Expires slides with a granularity (see
``docs/sql.md``), so most statements of a cycle change no indexed column. The load: ``--sessions``
sessions of ~1 KB, each given ``--cycles`` request cycles as the middleware runs them (lock and
load, save and release), round-robin. Counted by PostgreSQL itself: ``n_tup_hot_upd`` of
``n_tup_upd`` in ``pg_stat_user_tables`` for our sessions table, before and after; the provider's
connections are closed first, so that their backends report their statistics.

Run: ``python -m benchmarks.hot [--sessions 50] [--cycles 20] [--json PATH]``; the table type
follows ``STATEMODES_BENCH_SQL_TYPE`` as in every benchmark.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks import engines as registry
from benchmarks.cycle import payload

SESSIONS_TABLE = "ASPStateTempSessions"


def counts() -> tuple[int, int]:
    from django.db import connections

    with connections["pg"].cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = %s",
            [SESSIONS_TABLE],
        )
        row: Any = cursor.fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def fillfactor() -> str:
    from django.db import connections

    with connections["pg"].cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = %s", [SESSIONS_TABLE])
        row: Any = cursor.fetchone()
    options = (row[0] if row else None) or []
    return next((o.split("=", 1)[1] for o in options if o.startswith("fillfactor=")), "100")


def run(sessions: int, cycles: int) -> dict[str, Any]:
    engine = registry.ENGINES["sql-pg"]
    with registry.services([engine]):
        registry.use(engine)
        store_class = registry.store_class(engine)
        keys = []
        for _ in range(sessions):
            first = store_class(access="ReadWrite")
            first.update(payload())
            first.finish(save=True)
            keys.append(first.session_key)
        before = counts()
        for _ in range(cycles):
            for key in keys:
                session = store_class(key, access="ReadWrite")
                session["counter"] = session["counter"] + 1
                session.finish(save=True)
        registry.forget([engine])  # closes the provider: its backends report their counts
        expected = sessions * cycles * 2  # lock and load, save and release: two UPDATEs
        deadline = time.monotonic() + 30
        while True:
            after = counts()
            if after[0] - before[0] >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        factor = fillfactor()
    updates, hot = after[0] - before[0], after[1] - before[1]
    return {
        "sql_table_type": registry.SQL_TYPE,
        "fillfactor": factor,
        "cycles": sessions * cycles,
        "updates": updates,
        "hot_updates": hot,
        "hot_share": hot / updates if updates else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hot", description=__doc__)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=20, help="cycles per session")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args(argv)
    registry.setup_django()
    engine = registry.ENGINES["sql-pg"]
    reason = registry.unavailable(engine)
    if reason is not None:
        raise SystemExit(f"skipped sql-pg: {reason}")
    result = run(args.sessions, args.cycles)
    print(
        f"{result['cycles']} cycles on {args.sessions} sessions ({result['sql_table_type']} "
        f"tables, fillfactor {result['fillfactor']}): {result['hot_updates']} HOT updates of "
        f"{result['updates']} ({result['hot_share']:.1%})"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
