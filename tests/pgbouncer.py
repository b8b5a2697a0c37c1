"""The tests' PgBouncer: ``localservers.pgbouncer`` (shared with the benchmarks), skipped (or
failed, when services are required) where PgBouncer is not installed, or not built."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from localservers import pgbouncer as server
from tests.conftest import REQUIRE_SERVICES

PGBOUNCER = server.PGBOUNCER
# PgBouncer 1.24.1, built by scripts/test.sh: tracks prepared statements per client.
BUILT = server.BUILT


def need_pgbouncer(binary: str = PGBOUNCER) -> None:
    """Skip (or fail, when services are required) unless this PgBouncer binary is there."""
    message = server.available(binary)
    if message is not None:
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def pgbouncer(
    pool_size: int = 10,
    *,
    upstream: int = 5432,
    user: str = "root",
    binary: str = PGBOUNCER,
    **settings: int,
) -> Iterator[int]:
    """Start PgBouncer (transaction pooling) on a free loopback port; yield the port; stop it."""
    need_pgbouncer(binary)
    with server.pgbouncer(
        pool_size, upstream=upstream, user=user, binary=binary, **settings
    ) as port:
        yield port


def stats(port: int, database: str) -> dict[str, int]:
    """One database's totals from PgBouncer's ``SHOW STATS`` (its admin console)."""
    # auth_type = any lets any user into the admin console; the console takes simple queries.
    with psycopg.connect(
        host="127.0.0.1", port=port, user="root", dbname="pgbouncer", autocommit=True,
        prepare_threshold=None,
    ) as conn:  # fmt: skip
        cursor = conn.execute("SHOW STATS")
        names = [column.name for column in cursor.description or ()]
        rows: list[dict[str, Any]] = [dict(zip(names, row, strict=True)) for row in cursor]
    (row,) = [row for row in rows if row["database"] == database]
    return {name: int(value) for name, value in row.items() if name.startswith("total_")}
