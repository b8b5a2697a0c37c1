"""Helpers for a project's own tests: an empty session store, and what counts as a test database.

Django's test runner rolls back or flushes the database between tests, but session state lives
outside Django's transactions in most modes (the SQL providers use their own connections, so that
a session lock is seen at once; only on the runner's in-memory SQLite database do a ``TestCase``'s
sessions join its transaction), so a session saved by one test is still there in the next::

    from django.test import TestCase
    from django_statemodes.test import CleanSessionsMixin, clear_sessions

    class CartTests(CleanSessionsMixin, TestCase):  # an empty store around each test
        ...

    @pytest.fixture(autouse=True)  # pytest-django
    def clean_sessions():
        clear_sessions()
        yield
        clear_sessions()

See docs/testing.md.
"""

from __future__ import annotations

import re
import unittest
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core import mail
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.base.creation import TEST_DATABASE_PREFIX
from django.utils.module_loading import import_string

from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.providers.base import SessionStateProvider
from django_statemodes.providers.inproc import InProcProvider
from django_statemodes.providers.sql import SQLStateProvider, schema
from django_statemodes.providers.sql.base import Query
from django_statemodes.providers.stateserver import StateServerProvider

__all__ = [
    "CleanSessionsMixin",
    "clear_sessions",
    "is_runner_memory_database",
    "is_test_database",
    "testing",
]

# The name Django's SQLite backend gives an in-memory test database (``:memory:`` or no TEST
# NAME), and its clones for ``--parallel``: a shared-cache URI, so every connection of the
# process sees the same database.
_RUNNER_MEMORY_DB = re.compile(r"file:memorydb_[^?]*\?mode=memory&cache=shared")


def testing() -> bool:
    """Return True between Django's ``setup_test_environment()`` and its teardown.

    Django's runner and pytest-django both call it before they create the test databases; it
    is what gives ``django.core.mail.outbox``.
    """
    return hasattr(mail, "outbox")


def is_runner_memory_database(name: object) -> bool:
    """Return True for the in-memory SQLite database Django's test runner creates."""
    return isinstance(name, str) and _RUNNER_MEMORY_DB.fullmatch(name) is not None


def is_test_database(connection: BaseDatabaseWrapper) -> bool:
    """Return True if ``connection`` points at a test database made by a running test setup.

    The name is the runner's: ``test_`` + NAME, the alias's ``TEST["NAME"]``, or the in-memory
    SQLite database. Outside a test environment nothing is a test database, whatever its name.
    """
    if not testing():
        return False
    name = connection.settings_dict.get("NAME")
    test_name = (connection.settings_dict.get("TEST") or {}).get("NAME")
    if not isinstance(name, str) or not name:
        return False
    return (
        name.startswith(TEST_DATABASE_PREFIX)
        or name == test_name
        or is_runner_memory_database(name)
    )


def clear_sessions() -> int:
    """Delete every session of this application from the configured store; return how many.

    InProc empties this process's store; SQL deletes this application's rows
    (STATEMODES_APPLICATION_NAME) from STATEMODES_SQL_DATABASE; the Redis provider deletes this
    application's keys; the state server purges this application on every partition. Off mode
    has nothing to clear. Any other provider raises ``NotImplementedError``: delete its sessions
    in the test's own set-up.
    """
    engine = import_string(settings.SESSION_ENGINE + ".SessionStore")
    if not (isinstance(engine, type) and issubclass(engine, StateModeSessionBase)):
        if settings.SESSION_ENGINE == "django_statemodes.backends.off":
            return 0
        raise NotImplementedError(
            f"clear_sessions() empties django-statemodes' stores; SESSION_ENGINE is "
            f"{settings.SESSION_ENGINE!r}."
        )
    provider = engine.get_provider()
    if isinstance(provider, InProcProvider):
        return _clear_inproc(provider)
    if isinstance(provider, SQLStateProvider):
        return _clear_sql(provider)
    if isinstance(provider, StateServerProvider):
        return _clear_stateserver(provider)
    redis_provider = _redis_provider_class()
    if redis_provider is not None and isinstance(provider, redis_provider):
        return _clear_redis(provider)
    raise NotImplementedError(
        f"clear_sessions() cannot empty a {type(provider).__name__} store: delete its sessions "
        "in your tests' set-up."
    )


def _clear_inproc(provider: InProcProvider) -> int:
    keys = [item[0] for item in provider.store.snapshot()]
    return sum(provider.remove(key) for key in keys)


def _clear_sql(provider: SQLStateProvider) -> int:
    # Through the provider, so on the connections its sessions are written on: its own pool in
    # autocommit (the delete is neither undone with the test nor holding row locks its requests
    # wait for), or, on the runner's in-memory SQLite database inside a TestCase, the test's
    # own transaction, where that test's sessions are.
    q = connections[provider.alias].ops.quote_name
    marker = provider.placeholder
    if provider.vendor == "sqlite":
        tail = f"substr({q('SessionId')}, -{len(provider.suffix)}) = {marker}"
    else:
        tail = f"right({q('SessionId')}, {len(provider.suffix)}) = {marker}"
    sql = f"DELETE FROM {q(schema.SESSIONS)} WHERE {tail}"
    try:
        return provider.query(Query(sql, (provider.suffix,), int))
    except SessionStoreUnavailable as exc:
        if provider.vendor != "sqlite" or "locked" not in str(exc):
            raise
        # SQLite's one write lock, held by a TestCase's transaction after an ORM write on a
        # test database in a file: say why rather than fail on the next request.
        raise SessionStoreUnavailable(
            f"clear_sessions(): the SQLite database of {provider.alias!r} is locked ({exc}); a "
            "TestCase that wrote through the ORM holds SQLite's only write lock until it ends, "
            "and sessions join the test's transaction only on the runner's in-memory test "
            "database. Use TransactionTestCase, or no TEST NAME for that alias "
            "(docs/testing.md).",
            setting="STATEMODES_SQL_DATABASE",
        ) from exc


def _clear_stateserver(provider: StateServerProvider) -> int:
    from django_statemodes.stateserver.client import StateServerClient

    removed = 0
    for address in provider.resolver.all():
        client = StateServerClient(
            address,
            timeout=provider.timeout,
            application=provider.application,
            secret=provider.secret,
        )
        try:
            removed += int(client.purge())  # the PURGE operation: this application only
        finally:
            client.close()
    return removed


def _redis_provider_class() -> type[SessionStateProvider] | None:
    try:  # redis and django-redis are optional (the "redis" extra)
        from django_statemodes.providers.redis import RedisProvider
    except ImportError:
        return None
    return RedisProvider


def _clear_redis(provider: Any) -> int:
    from django.core.cache import caches

    client: Any = getattr(caches[provider.cache_alias], "client", None)  # django-redis's
    if hasattr(client, "_serverdict"):  # django-redis's ShardClient: every shard
        servers = list(client._serverdict.values())
    else:
        servers = [client.get_client(write=True)]
    # Every key of this application: session hashes and the expiry set.
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", provider.namespace) + "*"
    sessions = provider.namespace + "s:"
    removed = 0
    for server in servers:
        batch: list[bytes] = []
        for key in server.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                removed += _unlink(server, batch, sessions)
        removed += _unlink(server, batch, sessions)
    return removed


def _unlink(server: Any, keys: list[bytes], sessions: str) -> int:
    if not keys:
        return 0
    server.unlink(*keys)
    count = sum(key.decode().startswith(sessions) for key in keys)
    keys.clear()
    return count


if TYPE_CHECKING:
    _TestCase = unittest.TestCase
else:
    _TestCase = object


class CleanSessionsMixin(_TestCase):
    """Empty the session store before and after each test of a ``TestCase``.

    ``class MyTests(CleanSessionsMixin, TestCase)``: before, so a test never sees an earlier
    one's sessions; after, so a shared store (Redis, a state server) keeps none of the run's.
    """

    def setUp(self) -> None:
        clear_sessions()
        self.addCleanup(clear_sessions)
        super().setUp()
