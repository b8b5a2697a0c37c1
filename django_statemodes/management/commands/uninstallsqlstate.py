"""``manage.py uninstallsqlstate``: drop SQL mode's tables (``aspnet_regsql -ssremove``)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from django_statemodes.providers.sql import commands, ddl


class Command(BaseCommand):
    help = (
        "Drop the SQL session-state tables (like aspnet_regsql -ssremove), deleting every "
        "session stored in them."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        commands.add_common_arguments(parser, "uninstall from")
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="Do not ask for confirmation.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias, connection = commands.target(options)
        existing = ddl.existing_tables(connection)
        if not existing:
            if options["verbosity"] >= 1:
                self.stdout.write(
                    f"The session-state tables are not installed in database {alias!r}; "
                    "nothing to do."
                )
            return
        statements = ddl.uninstall_statements(connection, existing)
        if options["dry_run"]:
            for sql in statements:
                self.stdout.write(sql + ";")
            return
        if options["interactive"]:
            answer = input(
                f"This will DROP {', '.join(sorted(existing))} from database {alias!r}, "
                "deleting every stored session.\nType 'yes' to continue, or 'no' to cancel: "
            )
            if answer != "yes":
                raise CommandError("Uninstall cancelled.")
        atomic = transaction.atomic(using=alias, savepoint=connection.features.can_rollback_ddl)
        with atomic, connection.cursor() as cursor:
            for sql in statements:
                cursor.execute(sql)
        if options["verbosity"] >= 1:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Dropped session-state table(s) {', '.join(sorted(existing))} from "
                    f"database {alias!r}."
                )
            )
