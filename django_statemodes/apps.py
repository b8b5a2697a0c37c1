from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.checks import Tags, register
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.signals import connection_created
from django.db.models.signals import post_migrate

SQL_ENGINE = "django_statemodes.backends.sql"


class StateModesConfig(AppConfig):
    name = "django_statemodes"
    verbose_name = "Session state modes"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from django_statemodes.checks import check_settings

        register(Tags.compatibility)(check_settings)
        # Django's test runner and pytest-django, out of the box (docs/testing.md).
        connection_created.connect(close_sql_before_maintenance, dispatch_uid=__name__)
        post_migrate.connect(install_in_test_database, sender=self, dispatch_uid=__name__)
        # Sessions by user (STATEMODES_USER_INDEX): sign-ins bind sessions, password changes
        # may end them (sessions.py).
        from django.apps import apps

        if apps.is_installed("django.contrib.auth"):
            from django_statemodes import sessions

            sessions.connect()


def close_sql_providers() -> None:
    """Close the SQL providers' own connections (the next use opens new ones)."""
    from django_statemodes.core import registry
    from django_statemodes.providers.sql import SQLStateProvider

    if any(isinstance(p, SQLStateProvider) for p in list(registry.providers.values())):
        registry.close_all()


def close_sql_before_maintenance(*, connection: Any, **kwargs: Any) -> None:
    """Close the SQL providers when Django opens its no-database connection.

    Django opens it (``_nodb_cursor``) only to CREATE or DROP a test database, right before the
    statement; PostgreSQL refuses to drop a database that has sessions ("is being accessed by
    other users"), and the providers never use Django's connection, which the runner closes.
    """
    if connection.alias == NO_DB_ALIAS:
        close_sql_providers()


def install_in_test_database(*, using: str, **kwargs: Any) -> None:
    """Create the SQL state tables in a test database, as ``installsqlstate`` would.

    Only in a test database of SQL mode's alias: a production ``migrate`` installs nothing, since
    ``installsqlstate`` is a deliberate step (it picks the tables' type), like
    ``createcachetable``.
    """
    from django.conf import settings
    from django.db import connections

    from django_statemodes.conf import conf
    from django_statemodes.providers.sql import commands, schema
    from django_statemodes.test import is_test_database

    if settings.SESSION_ENGINE != SQL_ENGINE or using != conf.STATEMODES_SQL_DATABASE:
        return
    connection = connections[using]
    if connection.vendor not in schema.DIALECTS or not is_test_database(connection):
        return
    if not commands.routed_here(using):
        return  # a router keeps the tables out of this database, as installsqlstate obeys
    if commands.install(using):
        # A new test database: connections opened before the runner gave the alias its test
        # NAME (SQLite opens no no-database connection) would still reach the old database.
        close_sql_providers()
