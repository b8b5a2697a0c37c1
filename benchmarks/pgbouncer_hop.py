"""What PgBouncer's hop costs by itself: plain psycopg statements through it against direct.

``benchmarks.cycle`` compares the SQL engine through PgBouncer with the same engine connecting
directly. This one takes the engine away, to tell the pooler's cost from the provider's: the
same two statements a request cycle sends (lock and load, save and release, PostgreSQL's
``get_exclusive`` and ``update_release``, on one row of a ~1 KB session), and a bare
``SELECT`` + ``UPDATE`` of 1 KB on a table of its own, each sent by psycopg alone:

- directly to PostgreSQL (prepared, as the provider prepares);
- through PgBouncer 1.21+ (``BUILT``, ``max_prepared_statements = 100``), prepared;
- through Debian's PgBouncer (1.18 here), nothing prepared (a pooler without tracking).

Interleaved rounds; the ratio to direct is taken per round, with its range.

Run: ``python -m benchmarks.pgbouncer_hop [--rounds 10] [--cycles 300]``. Needs PostgreSQL at
127.0.0.1:5432 (user ``root``, database ``test``; the benchmark creates and drops tables of its
own) and both PgBouncers (``scripts/test.sh`` builds the newer one).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import psycopg

from django_statemodes.providers.sql.postgresql import statements
from localservers.pgbouncer import BUILT, pgbouncer

#: A sessions table of its own, with the columns the two statements use (the installed one is
#: never touched), and the floor's table.
SESSIONS_TABLE = "statemodes_bench_hop_sessions"
FLOOR_TABLE = "statemodes_bench_hop_floor"
SQL = statements(lambda name: f'"{SESSIONS_TABLE if name == "ASPStateTempSessions" else name}"')
#: The row the statements cycle on: a key of 32 characters and an application suffix of 8.
SESSION_ID = "benchpgbouncerhop000000000000000" + "0000beef"
PAYLOAD = b"\x00" + b"x" * 1000
TIMEOUT = 3600

Cycle = Callable[[], None]


def connect(port: int, prepare: bool) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user="root",
        dbname="test",
        autocommit=True,
        prepare_threshold=1 if prepare else None,
    )


def engine_statements(conn: psycopg.Connection[Any], prepare: bool) -> Cycle:
    """The cycle's two statements, as the provider sends them (binary, prepared or not)."""

    def cycle() -> None:
        row = conn.execute(
            SQL.get_exclusive, (SESSION_ID, SESSION_ID), binary=True, prepare=prepare
        ).fetchone()
        assert row is not None, "the benchmark's row is gone"
        params = (TIMEOUT, TIMEOUT, row[4], None, SESSION_ID, row[1])
        conn.execute(SQL.update_release, params, binary=True, prepare=prepare).fetchone()

    return cycle


def select_update(conn: psycopg.Connection[Any], prepare: bool) -> Cycle:
    """A bare read and write of 1 KB by primary key."""
    select = f"SELECT v FROM {FLOOR_TABLE} WHERE k = %s"
    update = f"UPDATE {FLOOR_TABLE} SET v = %s WHERE k = %s"

    def cycle() -> None:
        row = conn.execute(select, ("a",), binary=True, prepare=prepare).fetchone()
        assert row is not None
        conn.execute(update, (row[0], "a"), binary=True, prepare=prepare)

    return cycle


def set_up(conn: psycopg.Connection[Any]) -> None:
    tear_down(conn)
    conn.execute(
        f'CREATE UNLOGGED TABLE "{SESSIONS_TABLE}" ("SessionId" varchar(88) PRIMARY KEY, '
        '"Created" timestamptz NOT NULL, "Expires" timestamptz NOT NULL, '
        '"LockDate" timestamptz NOT NULL, "LockDateLocal" timestamp NOT NULL, '
        '"LockCookie" integer NOT NULL, "Timeout" integer NOT NULL, "Locked" boolean NOT NULL, '
        '"SessionItemShort" bytea, "SessionItemLong" bytea, "Flags" integer NOT NULL DEFAULT 0)'
    )
    conn.execute(f'CREATE INDEX ON "{SESSIONS_TABLE}" ("Expires")')  # as installsqlstate's
    conn.execute(SQL.insert, (SESSION_ID, TIMEOUT, TIMEOUT, PAYLOAD, None, 0))
    conn.execute(f"CREATE UNLOGGED TABLE {FLOOR_TABLE} (k text PRIMARY KEY, v bytea)")
    conn.execute(f"INSERT INTO {FLOOR_TABLE} VALUES ('a', %s)", (PAYLOAD,))


def tear_down(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f'DROP TABLE IF EXISTS "{SESSIONS_TABLE}", {FLOOR_TABLE}')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=300, help="cycles per path and round")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        admin = stack.enter_context(connect(5432, prepare=False))
        set_up(admin)
        stack.callback(tear_down, admin)
        ports = {
            "direct": (5432, True),
            "PgBouncer 1.21+, prepared": (
                stack.enter_context(pgbouncer(8, binary=BUILT, max_prepared_statements=100)),
                True,
            ),
            "PgBouncer (Debian), nothing prepared": (stack.enter_context(pgbouncer(8)), False),
        }
        for kind, build in (
            ("engine's statements", engine_statements),
            ("SELECT+UPDATE", select_update),
        ):
            cycles = {}
            for path, (port, prepare) in ports.items():
                conn = stack.enter_context(connect(port, prepare))
                cycles[path] = build(conn, prepare)
                for _ in range(max(10, args.cycles // 3)):  # warm: prepared, plans cached
                    cycles[path]()
            timings: dict[str, list[float]] = {path: [] for path in cycles}
            for _ in range(args.rounds):
                for path, cycle in cycles.items():
                    started = time.perf_counter()
                    for _ in range(args.cycles):
                        cycle()
                    timings[path].append((time.perf_counter() - started) / args.cycles * 1e6)
            direct = timings["direct"]
            for path, values in timings.items():
                per_round = [a / b for a, b in zip(values, direct, strict=True)]
                print(
                    f"{kind:<20} {path:<38} {statistics.median(values):8.1f} µs  "
                    f"{statistics.median(per_round):5.2f}x direct "
                    f"(rounds {min(per_round):.2f}-{max(per_round):.2f})"
                )


if __name__ == "__main__":
    main()
