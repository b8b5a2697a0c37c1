"""Every engine of ours for the async tests, a loop that refuses threads, and a pausing provider.

``ENGINES`` and ``use_engine`` give a test one engine of each mode (InProc, StateServer, SQL on
SQLite and PostgreSQL, Redis) with the same settings as the conformance suites. ``run_native``
runs a coroutine in an event loop whose default executor raises, and so does asgiref's
``sync_to_async`` (Django's fallback for an async method): a call that hops to such a thread
fails the test. A provider's own small pool (SQLite's, which the issue allows) is let through. ``Pausing`` wraps an engine's
provider and stops before and after each async store call, so a test can cancel a request
exactly there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from asgiref.sync import SyncToAsync
from django.test import override_settings

from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.providers.base import SessionStateProvider

T = TypeVar("T")

SQLITE, PG = "statesqlite", "pg"
REDIS_ALIAS = "statemodes-redis"
REDIS_PROVIDER = "django_statemodes.providers.redis.RedisProvider"

#: Engine ids, in the order tests run them.
ENGINES = ["inproc", "stateserver", "sql-sqlite", "sql-pg", "redis"]

#: The databases a module that uses SQL engines names in its ``django_db`` mark.
DATABASES = ["default", SQLITE, PG]


def use_engine(name: str, request: pytest.FixtureRequest) -> tuple[type[StateModeSessionBase], Any]:
    """Configure ``name`` (its services, settings) for one test; return its store and overrides.

    The caller enables the returned ``override_settings`` and disables it after the test. Its
    fixture must name ``sql_tables`` itself: installed inside a test's transaction (a lookup
    from here comes too late), the tables would be rolled back with it.
    """
    if name == "inproc":
        from django_statemodes.backends.inproc import SessionStore as InProc

        return InProc, override_settings(SESSION_ENGINE="django_statemodes.backends.inproc")
    if name == "stateserver":
        from django_statemodes.backends.stateserver import SessionStore as StateServer

        server = request.getfixturevalue("stateserver")
        return StateServer, override_settings(
            SESSION_ENGINE="django_statemodes.backends.stateserver",
            STATEMODES_STATE_CONNECTION=server.connection,
            STATEMODES_STATE_NETWORK_TIMEOUT=5,
        )
    if name.startswith("sql-"):
        from django_statemodes.backends.sql import SessionStore as SQL

        if name == "sql-pg":
            request.getfixturevalue("postgres")
        request.getfixturevalue("sql_tables")
        alias = PG if name == "sql-pg" else SQLITE
        return SQL, override_settings(
            SESSION_ENGINE="django_statemodes.backends.sql", STATEMODES_SQL_DATABASE=alias
        )
    assert name == "redis", name
    from django_statemodes.backends.custom import SessionStore as Custom

    request.getfixturevalue("redis_server")
    return Custom, override_settings(
        SESSION_ENGINE="django_statemodes.backends.custom",
        STATEMODES_CUSTOM_PROVIDER=REDIS_PROVIDER,
        STATEMODES_REDIS_ALIAS=REDIS_ALIAS,
    )


def threads_for_async(provider: SessionStateProvider) -> bool:
    """Say whether the provider's async twins are still the base class's thread wrappers."""
    return type(provider).aget_exclusive is SessionStateProvider.aget_exclusive


class ThreadUsed(AssertionError):
    """An async session call ran code in a thread."""


class NoThreadsLoop(asyncio.SelectorEventLoop):
    """An event loop whose default executor and ``sync_to_async`` refuse work."""

    def run_in_executor(self, executor: Any, func: Any, *args: Any) -> Any:  # type: ignore[override]
        handler = getattr(func, "func", None)  # sync_to_async: partial(its thread_handler, ...)
        if executor is None or isinstance(getattr(handler, "__self__", None), SyncToAsync):
            raise ThreadUsed(f"run_in_executor({func!r}): a thread, not native async I/O")
        return super().run_in_executor(executor, func, *args)


def run_native(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` in a ``NoThreadsLoop`` and return its result."""
    with asyncio.Runner(loop_factory=NoThreadsLoop) as runner:
        return runner.run(coroutine)


class Pausing:
    """A provider that stops at ``pause_at`` (``"aget_exclusive:after"``...) until ``resume()``.

    Wraps the engine's real provider; every other attribute is the real one's. ``paused`` is set
    when a call reaches the pause point, so a test knows exactly where the request is.
    """

    #: It suspends, unlike the in-memory store it may wrap: the core shields its calls.
    stores_objects = False

    def __init__(self, inner: SessionStateProvider, pause_at: str) -> None:
        self.inner = inner
        self.pause_at = pause_at
        self.paused = asyncio.Event()
        self._resume = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def resume(self) -> None:
        self._resume.set()

    async def _point(self, point: str) -> None:
        if point == self.pause_at:
            self.paused.set()
            await self._resume.wait()

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        await self._point(f"{name}:before")
        result = await getattr(self.inner, name)(*args, **kwargs)
        await self._point(f"{name}:after")
        return result

    async def aget(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("aget", *args, **kwargs)

    async def aget_exclusive(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("aget_exclusive", *args, **kwargs)

    async def aset_and_release(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("aset_and_release", *args, **kwargs)

    async def arelease(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("arelease", *args, **kwargs)

    async def aremove(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("aremove", *args, **kwargs)

    async def await_for_release(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("await_for_release", *args, **kwargs)
