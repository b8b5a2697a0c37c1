"""``manage.py installsqlstate``: create SQL mode's tables (``aspnet_regsql -ssadd``)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from django_statemodes.conf import conf
from django_statemodes.providers.sql import commands, ddl, index, schema


class Command(BaseCommand):
    help = (
        "Create the SQL session-state tables ASPStateTempSessions and ASPStateTempApplications "
        "(like aspnet_regsql -ssadd). Tables that already exist are kept; a sessions table of an "
        "earlier schema version is upgraded in place (new columns and index)."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        commands.add_common_arguments(parser, "install into")
        parser.add_argument(
            "--type",
            choices=schema.TYPES,
            default=None,
            help="temp (default, as aspnet_regsql -sstype t): UNLOGGED tables on PostgreSQL, "
            "emptied by a crash, faster; persisted: ordinary tables. MySQL, MariaDB and SQLite "
            "have only ordinary tables.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias, connection = commands.target(options)
        type_: str = options["type"] or schema.TEMP
        verbose = options["verbosity"] >= 1
        if not commands.routed_here(alias):
            # Django's createcachetable does the same: the routers decide where tables go.
            if verbose:
                self.stdout.write(
                    f"Database routers do not allow the session-state tables in database "
                    f"{alias!r}; nothing to do."
                )
            return
        unlogged = ddl.dialect(connection.vendor).column_types.unlogged
        if verbose and options["type"] == schema.TEMP and not unlogged:
            self.stdout.write(
                f"{connection.display_name} has no unlogged tables: --type temp creates "
                "ordinary tables there (see docs/sql.md)."
            )
        existing = ddl.existing_tables(connection)
        if verbose:
            for table in sorted(existing):
                self.stdout.write(f"Session-state table {table!r} already exists.")
                self._check_type(connection, table, options["type"])
        missing = [table for table in schema.TABLES if table not in existing]
        statements = ddl.install_statements(connection, type_, missing)
        # An installed sessions table of an earlier schema version is upgraded in place.
        upgrade = [] if schema.SESSIONS in missing else ddl.upgrade_statements(connection)
        if options["dry_run"]:
            for sql in statements + upgrade:
                self.stdout.write(sql + ";")
            return
        if statements or upgrade:
            commands.install(alias, type_)
            if verbose and statements:
                kind = "UNLOGGED (temp)" if "UNLOGGED" in statements[0] else "ordinary"
                self.stdout.write(
                    self.style.SUCCESS(
                        f"Created {kind} session-state table(s) {', '.join(missing)} in "
                        f"database {alias!r}."
                    )
                )
            if verbose and upgrade:
                self.stdout.write(
                    self.style.SUCCESS(
                        f"Upgraded table {schema.SESSIONS!r} in database {alias!r} to schema "
                        f"version {index.SCHEMA_VERSION} (the index of sessions by user)."
                    )
                )
        self._register_application(alias)

    def _check_type(self, connection: Any, table: str, wanted: str | None) -> None:
        actual = ddl.persistence(connection, table)
        if wanted is not None and actual is not None and actual != wanted:
            self.stderr.write(
                f"Table {table!r} is {actual}, not {wanted}: run 'manage.py uninstallsqlstate' "
                "first to change its type (this deletes its sessions)."
            )

    def _register_application(self, alias: str) -> None:
        # The application row (ASP.NET's TempGetAppID), so the admin can name the application.
        connection = connections[alias]
        name = conf.STATEMODES_APPLICATION_NAME
        app_id = schema.app_id(name)
        with connection.cursor() as cursor:
            cursor.execute(schema.register_application_statement(connection), [app_id, name])
            cursor.execute(schema.application_name_statement(connection), [app_id])
            row = cursor.fetchone()
        stored = row[0].rstrip() if row else name
        if stored.lower() != name.lower():
            raise CommandError(schema.collision(name, stored))
