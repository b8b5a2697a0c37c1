"""A database that refuses writes (a replica by mistake, a failover under way): 503, not 500.

The read-only alias is the test database itself, reached with a read-only default for every
transaction (PostgreSQL ``default_transaction_read_only``, MariaDB ``SET SESSION TRANSACTION
READ ONLY``): nothing on the server changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections
from django.test import Client

from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.testing import new_key
from tests.fixtures_sql import (
    MARIADB,
    PG,
    MakeProvider,
    close_providers,
    database_name,
    enabled_among,
)

pytestmark = pytest.mark.django_db(databases=["default", *enabled_among(PG, MARIADB)])

READ_ONLY = "readonly"  # added per test


@pytest.fixture(params=enabled_among(PG, MARIADB))
def writable(request: Any, sql_tables: list[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Yield the writable alias; READ_ONLY is the same database, refusing writes."""
    alias: str = request.param
    base = connections.settings[alias]
    if base["ENGINE"].endswith("postgresql"):
        options = {"options": "-c default_transaction_read_only=on"}
    else:
        options = {"init_command": "SET SESSION TRANSACTION READ ONLY"}
    refusing = {**base, "NAME": database_name(alias), "OPTIONS": options}
    monkeypatch.setitem(connections.settings, READ_ONLY, refusing)
    yield alias
    close_providers()  # the engine's providers of either alias hold connections to the database
    if READ_ONLY in connections:
        connections[READ_ONLY].close()
        del connections[READ_ONLY]


def test_writes_are_refused_clearly_and_reads_still_work(
    writable: str, make_provider: MakeProvider
) -> None:
    key = new_key()
    assert make_provider(writable).set_and_release(
        key, b"\x00{}", lock_id=None, timeout=60, new_item=True
    )
    replica = make_provider(READ_ONLY)
    item = replica.get(key)  # no slide possible: the item as stored
    assert item is not None and item.data == b"\x00{}" and not item.locked
    with pytest.raises(SessionStoreUnavailable) as refused:
        replica.get_exclusive(key)
    assert f"{READ_ONLY!r}" in str(refused.value) and "read-only" in str(refused.value)
    assert refused.value.setting == "STATEMODES_SQL_DATABASE"
    with pytest.raises(SessionStoreUnavailable):
        replica.set_and_release(new_key(), b"\x00{}", lock_id=None, timeout=60, new_item=True)
    make_provider(writable).remove(key)


def test_a_readwrite_view_gets_a_503_and_a_readonly_view_still_reads(
    writable: str, settings: Any, make_provider: MakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    settings.SESSION_ENGINE = "django_statemodes.backends.sql"
    settings.STATEMODES_SQL_DATABASE = writable
    client = Client()
    assert client.get("/increment/").json() == {"counter": 1}
    settings.STATEMODES_SQL_DATABASE = READ_ONLY
    with caplog.at_level(logging.ERROR, logger="django_statemodes"):
        response = client.get("/increment/")
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert any(f"{READ_ONLY!r}" in record.getMessage() for record in caplog.records)
    response = client.get("/read-only/")
    assert response.status_code == 200 and response.json() == {"counter": 1}
    settings.STATEMODES_SQL_DATABASE = writable
    assert client.get("/increment/").json() == {"counter": 2}  # nothing was lost
