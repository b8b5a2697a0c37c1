"""Build Django's own session test classes (fetched from its sdist) for one of our engines.

Each engine's test module calls ``make_django_suite`` and binds the two classes it returns:
``SessionTestsMixin`` (the engine contract) and ``SessionMiddlewareTests`` run with
``SessionStateMiddleware`` in place of Django's ``SessionMiddleware``.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

from django.test import TestCase, TransactionTestCase, override_settings
from sessions_tests import tests as dj

from django_statemodes.middleware import SessionStateMiddleware


def make_django_suite(
    engine: str,
    store: type[Any],
    *,
    base: type[TransactionTestCase] = TestCase,
    databases: set[str] | None = None,
) -> tuple[type, type]:
    attrs: dict[str, Any] = {"backend": store}
    if databases is not None:
        attrs["databases"] = databases
    name = store.__module__.rsplit(".", 1)[-1].title()
    session_tests = type(f"Django{name}SessionTests", (dj.SessionTestsMixin, base), attrs)

    def setUp(self: Any) -> None:
        patcher = mock.patch.object(dj, "SessionMiddleware", SessionStateMiddleware)
        patcher.start()
        self.addCleanup(patcher.stop)

    middleware_attrs: dict[str, Any] = {
        "setUp": setUp,
        # Reads Django's django_session table directly: a test of the db engine only.
        "test_empty_session_saved": None,
    }
    if databases is not None:
        middleware_attrs["databases"] = databases
    middleware_tests = override_settings(SESSION_ENGINE=engine)(
        type(f"Django{name}MiddlewareTests", (dj.SessionMiddlewareTests,), middleware_attrs)
    )
    return session_tests, middleware_tests
