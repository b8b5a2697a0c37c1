"""Every store the benchmarks compare: our engines, Django's own, and the raw floors.

One registry serves the in-process harness (``cycle``, ``handoff``) and the gunicorn app
(``benchmarks.app.settings``), so an engine is configured the same way in both. Our engines
still being written by others are skipped with a reason until they import.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from benchmarks.processes import free_port, port_open, python_module, running
from django_statemodes.conf import _cache as conf_cache

OURS = "ours"
DJANGO = "django"
FLOOR = "floor"

PG_PORT = 5432
MARIADB_PORT = 3306
REDIS_PORT = 6379
STATE_PORT_ENV = "STATEMODES_BENCH_STATE_PORT"
STATE_AOF_PORT_ENV = "STATEMODES_BENCH_STATE_AOF_PORT"
KV_PORT_ENV = "STATEMODES_BENCH_KV_PORT"
#: The pid of each server ``services()`` started, by need: the cycle benchmark reads their CPU.
SERVER_PIDS: dict[str, int] = {}


@dataclass(frozen=True)
class Engine:
    """One store under test.

    ``settings`` is applied (without ``setting_changed``: providers are not rebuilt) while the
    engine runs; ``needs`` names the services it uses; ``one_process`` marks stores that only
    see one process's memory (they are served by one gunicorn worker).
    """

    name: str
    kind: str
    label: str
    module: str | None = None
    needs: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()
    settings: Callable[[], dict[str, Any]] = dict
    one_process: bool = False
    database: str | None = field(default=None)


def _state_connection() -> dict[str, Any]:
    return {"STATEMODES_STATE_CONNECTION": f"tcpip=127.0.0.1:{os.environ.get(STATE_PORT_ENV)}"}


def _state_aof_connection() -> dict[str, Any]:
    port = os.environ.get(STATE_AOF_PORT_ENV)
    return {"STATEMODES_STATE_CONNECTION": f"tcpip=127.0.0.1:{port}"}


REDIS_PROVIDER = "django_statemodes.providers.redis.RedisProvider"

ENGINES: dict[str, Engine] = {
    e.name: e
    for e in [
        Engine("inproc", OURS, "InProc", "django_statemodes.backends.inproc", one_process=True),
        Engine(
            "stateserver",
            OURS,
            "StateServer",
            "django_statemodes.backends.stateserver",
            needs=("stateserver",),
            settings=_state_connection,
        ),
        # The same server with --appendonly: every write appended to a log before its reply.
        Engine(
            "stateserver-aof",
            OURS,
            "StateServer (--appendonly)",
            "django_statemodes.backends.stateserver",
            needs=("stateserver-aof",),
            settings=_state_aof_connection,
        ),
        Engine(
            "sql-pg",
            OURS,
            "SQL (PostgreSQL)",
            "django_statemodes.backends.sql",
            needs=("pg",),
            settings=lambda: {"STATEMODES_SQL_DATABASE": "pg"},
            database="pg",
        ),
        Engine(
            "sql-mariadb",
            OURS,
            "SQL (MariaDB)",
            "django_statemodes.backends.sql",
            needs=("mariadb",),
            settings=lambda: {"STATEMODES_SQL_DATABASE": "mariadb"},
            database="mariadb",
        ),
        # PostgreSQL through a PgBouncer (transaction pooling) the harness starts; LISTEN direct.
        Engine(
            "sql-pgbouncer",
            OURS,
            "SQL (PostgreSQL via PgBouncer)",
            "django_statemodes.backends.sql",
            needs=("pg", "pgbouncer"),
            settings=lambda: {
                "STATEMODES_SQL_DATABASE": "pgbouncer",
                "STATEMODES_SQL_POOLER": "transaction",
                "STATEMODES_SQL_LISTEN_DATABASE": "pg",
            },
            database="pgbouncer",
        ),
        # The same through PgBouncer 1.21+ (1.24, built by scripts/test.sh), which tracks
        # prepared statements per client: the provider prepares, as it does directly.
        Engine(
            "sql-pgbouncer-prepared",
            OURS,
            "SQL (PostgreSQL via PgBouncer 1.24, prepared)",
            "django_statemodes.backends.sql",
            needs=("pg", "pgbouncer-prepared"),
            settings=lambda: {
                "STATEMODES_SQL_DATABASE": "pgbouncer-prepared",
                "STATEMODES_SQL_POOLER": "transaction",
                "STATEMODES_SQL_LISTEN_DATABASE": "pg",
            },
            database="pgbouncer-prepared",
        ),
        Engine(
            "sql-sqlite",
            OURS,
            "SQL (SQLite)",
            "django_statemodes.backends.sql",
            settings=lambda: {"STATEMODES_SQL_DATABASE": "default"},
            database="default",
        ),
        Engine(
            "redis",
            OURS,
            "Custom: RedisProvider",
            "django_statemodes.backends.custom",
            needs=("redis",),
            imports=("django_statemodes.providers.redis",),
            settings=lambda: {
                "STATEMODES_CUSTOM_PROVIDER": REDIS_PROVIDER,
                "STATEMODES_REDIS_ALIAS": "redis",
            },
        ),
        # The same provider on a 6-node Redis Cluster the harness starts (OPTIONS["CLUSTER"]).
        Engine(
            "redis-cluster",
            OURS,
            "Custom: RedisProvider on Redis Cluster",
            "django_statemodes.backends.custom",
            needs=("redis-cluster",),
            imports=("django_statemodes.providers.redis",),
            settings=lambda: {
                "STATEMODES_CUSTOM_PROVIDER": REDIS_PROVIDER,
                "STATEMODES_REDIS_ALIAS": "redis-cluster",
            },
        ),
        Engine(
            "django-cache-locmem",
            DJANGO,
            "Django cache (LocMemCache)",
            "django.contrib.sessions.backends.cache",
            settings=lambda: {"SESSION_CACHE_ALIAS": "default"},
            one_process=True,
        ),
        Engine(
            "django-cache-redis",
            DJANGO,
            "Django cache (django-redis)",
            "django.contrib.sessions.backends.cache",
            needs=("redis",),
            settings=lambda: {"SESSION_CACHE_ALIAS": "redis"},
        ),
        Engine(
            "django-db-pg",
            DJANGO,
            "Django db (PostgreSQL)",
            "django.contrib.sessions.backends.db",
            needs=("pg",),
            settings=lambda: {"STATEMODES_BENCH_SESSION_DB": "pg"},
            database="pg",
        ),
        Engine(
            "django-db-mariadb",
            DJANGO,
            "Django db (MariaDB)",
            "django.contrib.sessions.backends.db",
            needs=("mariadb",),
            settings=lambda: {"STATEMODES_BENCH_SESSION_DB": "mariadb"},
            database="mariadb",
        ),
        Engine(
            "django-db-sqlite",
            DJANGO,
            "Django db (SQLite)",
            "django.contrib.sessions.backends.db",
            settings=lambda: {"STATEMODES_BENCH_SESSION_DB": "default"},
            database="default",
        ),
        Engine(
            "django-signed-cookies",
            DJANGO,
            "Django signed_cookies",
            "django.contrib.sessions.backends.signed_cookies",
        ),
        Engine("floor-sessionbase", FLOOR, "SessionBase over a dict"),
        # The floors read, decode, change, encode and write a session as our engines do (with
        # SESSION_SERIALIZER), on the same event loop (the KV server runs on uvloop when the
        # state server does) and the same table type (UNLOGGED for --type temp) as ours.
        Engine("floor-asyncio-kv", FLOOR, "KV server GET+SET, same loop", needs=("kvserver",)),
        # Django's SessionBase (and, over HTTP, SessionMiddleware) on that server: the least a
        # Django session engine outside the process does.
        Engine(
            "floor-kv-session",
            FLOOR,
            "Django SessionBase on the KV server",
            "benchmarks.kvsession",
            needs=("kvserver",),
        ),
        Engine("floor-redis-py", FLOOR, "redis-py GET+SET", needs=("redis",)),
        Engine("floor-psycopg", FLOOR, "psycopg SELECT+UPDATE, same table type", needs=("pg",)),
    ]
}


#: The floors whose HTTP view does a session's work by hand on their store, without session
#: middleware (``benchmarks.app.views``), with that view's path.
BY_HAND = {
    "floor-asyncio-kv": "/kv/increment/",
    "floor-redis-py": "/redis/increment/",
    "floor-psycopg": "/pg/increment/",
}


def names(kind: str) -> list[str]:
    return [name for name, engine in ENGINES.items() if engine.kind == kind]


def select(text: str | None, kind: str) -> list[Engine]:
    """Parse a ``--engines``-style list ("all", "none" or comma-separated names)."""
    if text is None or text == "all":
        return [ENGINES[name] for name in names(kind)]
    if text == "none":
        return []
    chosen = []
    for name in (part.strip() for part in text.split(",")):
        if name not in ENGINES:
            raise SystemExit(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
        chosen.append(ENGINES[name])
    return chosen


def unavailable(engine: Engine) -> str | None:
    """Return why ``engine`` cannot run here, or None."""
    for module in ((engine.module,) if engine.module else ()) + engine.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"{module} is not importable yet ({exc})"
    if {"stateserver", "stateserver-aof"} & set(engine.needs) and (
        importlib.util.find_spec("django_statemodes.stateserver.__main__") is None
    ):
        return "python -m django_statemodes.stateserver is not written yet"
    if "pg" in engine.needs and not port_open(PG_PORT):
        return f"PostgreSQL is not reachable at 127.0.0.1:{PG_PORT}"
    if "mariadb" in engine.needs and not (
        port_open(MARIADB_PORT) and importlib.util.find_spec("MySQLdb") is not None
    ):
        return f"MariaDB (and mysqlclient) is not reachable at 127.0.0.1:{MARIADB_PORT}"
    if "pgbouncer" in engine.needs and not os.path.exists("/usr/sbin/pgbouncer"):
        return "PgBouncer is not installed (/usr/sbin/pgbouncer)"
    if "pgbouncer-prepared" in engine.needs:
        from localservers import pgbouncer

        return pgbouncer.available(pgbouncer.BUILT)
    if "redis" in engine.needs and not port_open(REDIS_PORT):
        return f"Redis is not reachable at 127.0.0.1:{REDIS_PORT}"
    if "redis-cluster" in engine.needs:
        from localservers.redis_cluster import available

        return available()
    return None


def runnable(engines: Iterable[Engine], say: Callable[[str], None] = print) -> list[Engine]:
    """Keep the engines that can run, telling why each other one is skipped."""
    kept = []
    for engine in engines:
        reason = unavailable(engine)
        if reason is None:
            kept.append(engine)
        else:
            say(f"skipped {engine.name}: {reason}")
    return kept


def setup_django() -> None:
    # The harness needs its own settings (the pg alias, both caches), whatever the shell says.
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    import django

    django.setup()


#: Settings as they were before an engine's ``use`` changed them (absent: _UNSET).
_before: dict[str, Any] = {}
_UNSET = object()


def use(engine: Engine) -> None:
    """Point the settings at ``engine`` (plain assignment: no provider rebuild, no signal).

    What an earlier engine set and this one does not is put back first: a pooler setting of
    the PgBouncer engine must not follow the direct PostgreSQL engine measured after it.
    """
    from django.conf import settings

    if engine.module:
        settings.SESSION_ENGINE = engine.module
    wanted = engine.settings()
    for key in [key for key in _before if key not in wanted]:
        value = _before.pop(key)
        if value is _UNSET:
            delattr(settings, key)
        else:
            setattr(settings, key, value)
    for key, value in wanted.items():
        _before.setdefault(key, getattr(settings, key, _UNSET))
        setattr(settings, key, value)
    # The package caches the settings it reads until a setting_changed, which is not sent here
    # (it would rebuild every provider): without this, every SQL engine would get the alias the
    # first one read, every state server engine the first one's address.
    conf_cache.clear()


_stores: dict[str, type[Any]] = {}


def store_class(engine: Engine) -> type[Any]:
    """Return the engine's ``SessionStore``; ours get a subclass each, hence a provider each.

    Two engines on one module (SQL on PostgreSQL and on SQLite) then run side by side.
    """
    if engine.name not in _stores:
        assert engine.module is not None
        base: type[Any] = importlib.import_module(engine.module).SessionStore
        if engine.kind == OURS:
            use(engine)  # the provider is built from the engine's settings, now
            name = "Bench" + engine.name.title().replace("-", "") + "Store"
            base = type(name, (base,), {"__module__": engine.module})
            base.get_provider()
        _stores[engine.name] = base
    return _stores[engine.name]


#: The type of our SQL tables in every benchmark: installsqlstate's default (temp: UNLOGGED on
#: PostgreSQL), or "persisted" (WAL-logged, like Django's django_session).
SQL_TYPE = os.environ.get("STATEMODES_BENCH_SQL_TYPE", "temp")


#: The psycopg floor's statements, on ``floor_table``: the cycle's and the HTTP view's.
FLOOR_SELECT = "SELECT data FROM statemodes_bench_floor WHERE id = %s"
FLOOR_UPSERT = (
    "INSERT INTO statemodes_bench_floor VALUES (%s, %s) "
    "ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data"
)


def floor_table(conn: Any) -> None:
    """(Re)create the psycopg floor's table, of the same type as ours.

    UNLOGGED for --type temp (no WAL), logged for persisted.
    """
    unlogged = "UNLOGGED " if SQL_TYPE == "temp" else ""
    conn.execute("DROP TABLE IF EXISTS statemodes_bench_floor")
    conn.execute(f"CREATE {unlogged}TABLE statemodes_bench_floor (id text PRIMARY KEY, data bytea)")


def floor_connection() -> Any:
    """A plain psycopg connection to the ``pg`` alias's database, in autocommit."""
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["pg"]
    return psycopg.connect(
        host=db["HOST"], port=db["PORT"], dbname=db["NAME"], user=db["USER"], autocommit=True
    )


def prepare(engine: Engine) -> None:
    """Create what the engine's store needs: Django's session table, our SQL tables, the
    psycopg floor's table.

    Our tables are made afresh, of ``SQL_TYPE``: installsqlstate keeps tables that exist, so a
    run would otherwise measure whatever type an earlier run or test left behind.
    """
    from django.core.management import call_command

    if engine.kind == DJANGO and engine.database:
        call_command("migrate", "sessions", database=engine.database, verbosity=0)
    elif engine.kind == OURS and engine.database:
        call_command("uninstallsqlstate", database=engine.database, interactive=False, verbosity=0)
        call_command("installsqlstate", database=engine.database, type=SQL_TYPE, verbosity=0)
    elif engine.name == "floor-psycopg":
        with floor_connection() as conn:
            floor_table(conn)


@contextmanager
def services(engines: Iterable[Engine], wrap: Callable[[int], int] | None = None) -> Iterator[None]:
    """Start the servers the engines need (state server, asyncio KV floor), prepare databases.

    ``wrap`` (the round-trip count) gets the port of each server started here and returns the
    port the engines use instead (a counting proxy's).
    """
    engines = list(engines)
    through = wrap or (lambda port: port)
    needs = {need for engine in engines for need in engine.needs}
    with ExitStack() as stack:
        if "stateserver" in needs:
            port = free_port()
            command = python_module("django_statemodes.stateserver", "--port", str(port))
            SERVER_PIDS["stateserver"] = stack.enter_context(running(command, port)).pid
            os.environ[STATE_PORT_ENV] = str(through(port))
        if "stateserver-aof" in needs:
            port = free_port()
            snapshot = os.path.join(stack.enter_context(tempfile.TemporaryDirectory()), "s.snap")
            command = python_module(
                "django_statemodes.stateserver",
                *("--port", str(port), "--snapshot", snapshot, "--appendonly"),
            )
            SERVER_PIDS["stateserver-aof"] = stack.enter_context(running(command, port)).pid
            os.environ[STATE_AOF_PORT_ENV] = str(through(port))
        if "redis-cluster" in needs:
            from django.conf import settings

            from localservers.redis_cluster import running_cluster

            cluster = stack.enter_context(running_cluster())
            # In place: Django's cache handler keeps the CACHES dict it read first.
            settings.CACHES["redis-cluster"] = cluster.cache()
        if "mariadb" in needs:
            _add_database("mariadb", {"ENGINE": "django.db.backends.mysql", "PORT": through(3306)})
        if "pgbouncer" in needs:
            from localservers.pgbouncer import pgbouncer

            port = through(stack.enter_context(pgbouncer(pool_size=8)))
            _add_database("pgbouncer", {"ENGINE": "django.db.backends.postgresql", "PORT": port})
        if "pgbouncer-prepared" in needs:
            from localservers.pgbouncer import BUILT, pgbouncer

            bouncer = pgbouncer(pool_size=8, binary=BUILT, max_prepared_statements=100)
            port = through(stack.enter_context(bouncer))
            _add_database(
                "pgbouncer-prepared",
                {"ENGINE": "django.db.backends.postgresql", "PORT": port,
                 "OPTIONS": {"prepare_threshold": 1}},
            )  # fmt: skip
        if "kvserver" in needs:
            port = free_port()
            kv = running(python_module("benchmarks.kvserver", str(port)), port)
            SERVER_PIDS["kvserver"] = stack.enter_context(kv).pid
            os.environ[KV_PORT_ENV] = str(through(port))
        for engine in engines:
            prepare(engine)
        try:
            yield
        finally:
            forget(engines)


def _add_database(alias: str, entry: dict[str, Any]) -> None:
    """Add a DATABASES alias at run time (database ``test`` as root at 127.0.0.1)."""
    from django.conf import settings
    from django.db import connections

    entry = {"NAME": "test", "USER": "root", "HOST": "127.0.0.1", "CONN_MAX_AGE": None, **entry}
    entry["PORT"] = str(entry["PORT"])
    settings.DATABASES[alias] = entry
    # In place: Django's connection handler keeps the DATABASES it configured first.
    configured = connections.configure_settings({"default": {}, alias: entry})
    connections.settings[alias] = configured[alias]


def forget(engines: Iterable[Engine]) -> None:
    """Close the providers of our engines' stores: the next run (new ports) builds new ones."""
    for engine in engines:
        store = _stores.pop(engine.name, None)
        if store is not None and engine.kind == OURS:
            store.get_provider().close()
