"""A user's tests: sessions through the test clients, users made in the tests.

The same tests run under ``manage.py test`` and pytest-django, in every mode
(tests/test_test_runner.py). On SQLite the users are written in the ``TestCase``'s transaction
before the session is: SQL mode must not be locked out by it (docs/testing.md).
"""

from __future__ import annotations

from importlib import import_module
from typing import ClassVar
from unittest import skipUnless

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.test import TestCase, TransactionTestCase

from django_statemodes.test import CleanSessionsMixin, clear_sessions

SQL_ON_SQLITE = (
    settings.SESSION_ENGINE == "django_statemodes.backends.sql" and connection.vendor == "sqlite"
)


def stored(session_key: str) -> bool:
    """Return True if the store holds the session (read as Django's test client would)."""
    found: bool = import_module(settings.SESSION_ENGINE).SessionStore().exists(session_key)
    return found


class CartTests(CleanSessionsMixin, TestCase):
    def test_the_cart_lives_in_the_session(self) -> None:
        self.client.get("/add/apple/")
        response = self.client.get("/add/pear/")
        self.assertEqual(response.json(), {"cart": ["apple", "pear"]})
        self.assertEqual(self.client.get("/cart/").json(), {"cart": ["apple", "pear"]})

    def test_clear_sessions_empties_the_store(self) -> None:
        User.objects.create_user("grace")  # an ORM write first: SQLite's write lock is held
        self.client.get("/add/apple/")
        self.assertGreaterEqual(clear_sessions(), 1)
        self.assertEqual(self.client.get("/cart/").json(), {"cart": []})
        self.assertEqual(clear_sessions(), 0)

    async def test_an_async_view_uses_aget_and_aset(self) -> None:
        await User.objects.acreate(username="linus")
        await self.async_client.get("/async/add/apple/")
        response = await self.async_client.get("/async/add/pear/")
        self.assertEqual(response.json(), {"cart": ["apple", "pear"]})


class LoginTests(CleanSessionsMixin, TestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        User.objects.create_user("ada", password="pw-of-ada")

    def test_a_user_made_in_set_up_test_data_logs_in(self) -> None:
        self.assertTrue(self.client.login(username="ada", password="pw-of-ada"))
        self.assertEqual(self.client.get("/whoami/").json(), {"user": "ada"})

    def test_the_session_is_written_after_the_test_writes_through_the_orm(self) -> None:
        User.objects.create_user("alan", password="pw-of-alan")
        self.assertTrue(self.client.login(username="alan", password="pw-of-alan"))
        self.assertEqual(self.client.post("/add/apple/").json(), {"cart": ["apple"]})
        self.assertEqual(self.client.get("/whoami/").json(), {"user": "alan"})


class TransactionLoginTests(CleanSessionsMixin, TransactionTestCase):
    # No transaction around the test: the sessions are committed as in production.
    def test_a_user_made_in_the_test_logs_in(self) -> None:
        User.objects.create_user("ada", password="pw-of-ada")
        self.assertTrue(self.client.login(username="ada", password="pw-of-ada"))
        self.assertEqual(self.client.get("/whoami/").json(), {"user": "ada"})


@skipUnless(SQL_ON_SQLITE, "sessions join the TestCase's transaction on SQLite's test database")
class RollbackTests(TestCase):
    # No CleanSessionsMixin: the rollback at the end of each test is what empties the store,
    # as with Django's db session engine. The tests run in name order.
    saved: ClassVar[str | None] = None

    def test_1_a_test_saves_a_session(self) -> None:
        User.objects.create_user("barbara")
        self.client.get("/add/apple/")
        key = self.client.cookies[settings.SESSION_COOKIE_NAME].value
        self.assertTrue(stored(key))
        type(self).saved = key

    def test_2_the_next_test_does_not_see_it(self) -> None:
        self.assertIsNotNone(self.saved)
        self.assertFalse(stored(str(self.saved)))
        self.assertEqual(clear_sessions(), 0)
