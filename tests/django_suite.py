"""Build Django's own session test classes (fetched from its sdist) for one of our engines.

Each engine's test module calls ``make_django_suite`` and binds the two classes it returns:
``SessionTestsMixin`` (the engine contract) and ``SessionMiddlewareTests`` run with
``SessionStateMiddleware`` in place of Django's ``SessionMiddleware``.

Django's tests are fetched on first use, by the first module that builds them (tests/djangotests.py
downloads the sdist once into ``.djangotests/``), not when the settings are imported. Their app
(``sessions_tests``, a custom session model none of the classes built here uses) is installed
only while its modules are imported. ``STATEMODES_DJANGO_TESTS=0`` fetches nothing: building the
classes then fails, as importing them always did.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any
from unittest import mock

from django.conf import settings
from django.test import TestCase, TransactionTestCase, override_settings

from django_statemodes.middleware import SessionStateMiddleware
from tests.djangotests import django_tests_path


def django_session_tests() -> ModuleType:
    """Return Django's ``sessions_tests.tests`` module, fetching it on first use."""
    if os.environ.get("STATEMODES_DJANGO_TESTS", "1") != "1":
        raise ImportError("STATEMODES_DJANGO_TESTS=0: Django's own session tests are not fetched")
    path = str(django_tests_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    with override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, "sessions_tests"]):
        return importlib.import_module("sessions_tests.tests")


def make_django_suite(
    engine: str,
    store: type[Any],
    *,
    base: type[TransactionTestCase] = TestCase,
    databases: set[str] | None = None,
) -> tuple[type, type]:
    dj = django_session_tests()
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
