"""``manage.py purge_sessions``: remove expired sessions, for cron (ASP.NET's Agent job)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_statemodes.exceptions import SessionStoreUnavailable


class Command(BaseCommand):
    help = (
        "Delete expired sessions from the configured session store, sending session_end for "
        "each when receivers are connected. Run it from cron."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Count the expired sessions without deleting them.",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="Sessions deleted per batch, where the store deletes in batches (SQL).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        engine = import_module(settings.SESSION_ENGINE)
        store = engine.SessionStore
        dry_run: bool = options["dry_run"]
        batch_size: int | None = options["batch_size"]
        if batch_size is not None and batch_size < 1:
            raise CommandError("--batch-size must be a positive integer.")
        try:
            if hasattr(store, "purge"):
                count = store.purge(dry_run=dry_run, batch_size=batch_size)
            elif dry_run:
                raise CommandError(
                    f"Session engine {settings.SESSION_ENGINE!r} cannot count expired sessions."
                )
            else:
                # Django's own engines: exactly what clearsessions does.
                store.clear_expired()
                count = None
        except NotImplementedError:
            raise CommandError(
                f"Session engine {settings.SESSION_ENGINE!r} doesn't support purging expired "
                "sessions."
            ) from None
        except SessionStoreUnavailable as exc:
            raise CommandError(f"{exc} Check {exc.setting}.") from exc
        if options["verbosity"] < 1:
            return
        if count is None:
            self.stdout.write("Expired sessions purged.")
        elif dry_run:
            self.stdout.write(f"{count} expired session(s) would be purged.")
        else:
            self.stdout.write(self.style.SUCCESS(f"Purged {count} expired session(s)."))
