"""Hostile session keys (issue 14, point 4): refused at the edge, in every engine.

A cookie carrying a NUL byte, 0xFF, 10,000 characters, non-ASCII text or SQL is no key at all:
the middleware drops it before any engine sees it, so no view answers 500 and no store is ever
asked about it. Each engine runs twice: as the site configures it (its own engine module), and
in Custom mode over a subclass of the same real provider that writes down every key it is asked
about (the store behind it is the real one), which is how "never queried" is observed.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import pytest
from django.db import connections
from django.test import AsyncClient, Client, override_settings
from django.test.utils import CaptureQueriesContext

from django_statemodes.providers.base import SessionStateProvider
from django_statemodes.providers.inproc import InProcProvider
from django_statemodes.providers.redis import RedisProvider
from django_statemodes.providers.sql.postgresql import PostgresStateProvider
from django_statemodes.providers.sql.sqlite import SQLiteStateProvider
from django_statemodes.providers.stateserver import StateServerProvider
from tests.engines import OPERATIONS
from tests.fixtures_sql import ALIASES, PG, PG_ENABLED, SQLITE, database_name
from tests.fixtures_stateserver import StateServerProcess
from tests.server import get, gunicorn, session_cookie

COOKIE = "sessionid"

HOSTILE = {
    "nul": "\x00" + "a" * 31,
    "0xff": "a" * 31 + "\xff",
    "10000-chars": "a" * 10_000,
    "41-chars": "a" * 41,  # one more than Django's session_key column holds
    "too-short": "abc1234",  # Django's _validate_session_key wants at least 8
    "non-ascii": "é" * 32,
    # As a WSGI server hands UTF-8 bytes to Django: decoded as Latin-1.
    "cjk": ("会話" * 16).encode().decode("latin-1"),
    "uppercase": "A" * 32,  # outside Django's alphabet (lowercase letters and digits)
    "sql": "'; DROP TABLE aspstatetempsessions; --",
    "sql-or": "x' OR '1'='1",
}

#: (path, mode): a ReadWrite view that writes, a ReadOnly view that reads, an untouched view.
VIEWS = ["/increment/", "/read-only/", "/unmarked-disabled-twin/"]

#: Every key a recording provider was asked about, in call order.
asked: list[str] = []

P = TypeVar("P", bound=SessionStateProvider)


def _recorded(base: type[SessionStateProvider], name: str) -> Callable[..., Any]:
    inner = getattr(base, name)
    if inspect.iscoroutinefunction(inner):

        async def arecorded(self: SessionStateProvider, *args: Any, **kwargs: Any) -> Any:
            asked.extend(a for a in args[:1] if isinstance(a, str))
            return await inner(self, *args, **kwargs)

        return functools.wraps(inner)(arecorded)

    def recorded(self: SessionStateProvider, *args: Any, **kwargs: Any) -> Any:
        asked.extend(a for a in args[:1] if isinstance(a, str))
        return inner(self, *args, **kwargs)

    return functools.wraps(inner)(recorded)


def recording(base: type[P]) -> type[P]:
    """The real provider class, writing down the key of every operation before running it."""
    cls = type(f"Recording{base.__name__}", (base,), {"__module__": __name__})
    for name in OPERATIONS:
        if hasattr(base, name):
            setattr(cls, name, _recorded(base, name))
    return cast(type[P], cls)


RecordingInProc = recording(InProcProvider)
RecordingStateServer = recording(StateServerProvider)
RecordingSQLite = recording(SQLiteStateProvider)
RecordingPostgres = recording(PostgresStateProvider)
RecordingRedis = recording(RedisProvider)

CUSTOM = "django_statemodes.backends.custom"


def _custom(provider: str, **options: Any) -> dict[str, Any]:
    return {
        "SESSION_ENGINE": CUSTOM,
        "STATEMODES_CUSTOM_PROVIDER": f"{__name__}.{provider}",
        "STATEMODES_CUSTOM_PROVIDER_OPTIONS": options,
    }


pg = [pytest.mark.skipif(not PG_ENABLED, reason="PostgreSQL is not reachable")]

#: id -> (the engine as a site configures it, the same store through a recording provider,
#: the fixtures it needs).
ENGINES = [
    pytest.param(
        {"SESSION_ENGINE": "django_statemodes.backends.inproc"},
        _custom("RecordingInProc"),
        (),
        id="inproc",
    ),
    pytest.param(
        {"SESSION_ENGINE": "django_statemodes.backends.stateserver"},
        _custom("RecordingStateServer"),
        ("stateserver",),
        id="stateserver",
        marks=pytest.mark.stateserver,
    ),
    pytest.param(
        {"SESSION_ENGINE": "django_statemodes.backends.sql", "STATEMODES_SQL_DATABASE": SQLITE},
        _custom("RecordingSQLite", alias=SQLITE),
        ("sql_tables",),
        id="sql-sqlite",
    ),
    pytest.param(
        {"SESSION_ENGINE": "django_statemodes.backends.sql", "STATEMODES_SQL_DATABASE": PG},
        _custom("RecordingPostgres", alias=PG),
        ("postgres", "sql_tables"),
        id="sql-postgresql",
        marks=pg,
    ),
    pytest.param(
        {
            "SESSION_ENGINE": CUSTOM,
            "STATEMODES_CUSTOM_PROVIDER": "django_statemodes.providers.redis.RedisProvider",
            "STATEMODES_REDIS_ALIAS": "statemodes-redis",
        },
        {**_custom("RecordingRedis"), "STATEMODES_REDIS_ALIAS": "statemodes-redis"},
        ("redis_server",),
        id="custom-redis",
        marks=pytest.mark.redis,
    ),
]

pytestmark = pytest.mark.django_db(databases=["default", *ALIASES], transaction=True)


def _settings(
    request: pytest.FixtureRequest, engine: dict[str, Any], needs: tuple[str, ...]
) -> dict[str, Any]:
    """The engine's settings, its services started (the state server's address filled in)."""
    overrides = dict(engine)
    for fixture in needs:
        value = request.getfixturevalue(fixture)
        if isinstance(value, StateServerProcess):
            overrides["STATEMODES_STATE_CONNECTION"] = value.connection
    return overrides


def _assert_refused(response: Any, bad: str) -> None:
    """The request was answered (no 500) as one without a key; a new key, if any, is ours."""
    assert response.status_code < 500, response.content[:300]
    handled = getattr(response, "wsgi_request", None) or response.asgi_request
    session = handled.session
    assert session.session_key != bad
    sent = response.cookies.get(COOKIE)
    if sent is not None and sent.value:
        assert sent.value != bad
        assert len(sent.value) == 32 and sent.value.isalnum()


def _hit_every_view(bad: str) -> None:
    for path in VIEWS:
        client = Client()
        client.cookies[COOKIE] = bad
        response = client.get(path)
        _assert_refused(response, bad)
        if path == "/increment/":
            assert response.json() == {"counter": 1}  # a fresh session, not the bad key's
        if path == "/read-only/":
            assert response.json() == {"counter": None}
    async_client = AsyncClient()
    async_client.cookies[COOKIE] = bad
    _assert_refused(asyncio.run(async_client.get("/async-read-only/")), bad)


@pytest.mark.parametrize(("engine", "recorded", "needs"), ENGINES)
@pytest.mark.parametrize("bad", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_cookie_is_no_key_in_every_engine(
    request: pytest.FixtureRequest,
    engine: dict[str, Any],
    recorded: dict[str, Any],
    needs: tuple[str, ...],
    bad: str,
) -> None:
    with override_settings(**_settings(request, engine, needs)):
        _hit_every_view(bad)
    asked.clear()
    with override_settings(**_settings(request, recorded, needs)):
        _hit_every_view(bad)
    assert asked, "the recording provider was never used: the test would prove nothing"
    assert bad not in asked


DJANGO_ENGINES = [
    "django.contrib.sessions.backends.db",
    "django.contrib.sessions.backends.cache",
    "django.contrib.sessions.backends.cached_db",
    "django.contrib.sessions.backends.file",
]


@pytest.mark.parametrize("engine", DJANGO_ENGINES)
@pytest.mark.parametrize("bad", HOSTILE.values(), ids=HOSTILE.keys())
def test_django_engines_under_our_middleware_never_see_a_hostile_key(
    engine: str, bad: str, tmp_path: Any
) -> None:
    with (
        override_settings(SESSION_ENGINE=engine, SESSION_FILE_PATH=str(tmp_path)),
        CaptureQueriesContext(connections["default"]) as queries,
    ):
        _hit_every_view(bad)
    assert all(bad not in query["sql"] for query in queries.captured_queries)


def test_a_valid_key_is_still_used() -> None:
    """The control: a key of Django's alphabet and length reaches the engine."""
    client = Client()
    assert client.get("/increment/").json() == {"counter": 1}
    key = client.cookies[COOKIE].value
    assert Client(headers={"cookie": f"{COOKIE}={key}"}).get("/read-only/").json() == {"counter": 1}


# Through a real server: the NUL byte that gave psycopg.DataError (a 500) on PostgreSQL.


@pytest.fixture
def sql_site(sql_tables: list[str]) -> Iterator[int]:
    env = {
        "STATEMODES_SQLAPP_NAME": database_name(PG),
        "DJANGO_SETTINGS_MODULE": "tests.sqlapp.settings",
    }
    with gunicorn("tests.sqlapp.wsgi", workers=1, threads=2, env=env) as port:
        yield port


# The cookie as a browser may send it: a quoted value with octal escapes, which Django unquotes
# (a raw NUL would be refused by gunicorn before Django saw it).
WIRE = {
    "nul": '"\\000' + "a" * 31 + '"',
    "0xff": '"' + "a" * 31 + '\\377"',
    # gunicorn refuses a header over 8,190 bytes itself (400): stay under it to reach Django.
    "4000-chars": "a" * 4_000,
    "sql": '"\\"; DROP TABLE aspstatetempsessions; --"',
}


@pytest.mark.slow
@pytest.mark.skipif(not PG_ENABLED, reason="PostgreSQL is not reachable")
@pytest.mark.parametrize("cookie", WIRE.values(), ids=WIRE.keys())
def test_a_hostile_cookie_through_gunicorn_on_postgresql(sql_site: int, cookie: str) -> None:
    for path in VIEWS:
        status, headers, body = get(sql_site, path, cookie)
        assert status < 500, body[:300]
        if path == "/increment/":
            assert json.loads(body) == {"counter": 1}
            assert len(session_cookie(headers)) == 32
