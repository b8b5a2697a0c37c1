"""``manage.py purge_sessions``: remove expired sessions, for cron (ASP.NET's Agent job)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_statemodes.exceptions import SessionStoreUnavailable

BAR_WIDTH = 30


class Command(BaseCommand):
    help = (
        "Delete expired sessions from the configured session store, sending session_end for "
        "each when receivers are connected. Run it from cron: without a terminal it prints one "
        "summary line (none at --verbosity 0); on a terminal it shows a progress bar."
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
            help="Sessions deleted per batch, where the store deletes in batches (SQL); "
            "default STATEMODES_PURGE_BATCH_SIZE.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        engine = import_module(settings.SESSION_ENGINE)
        store = engine.SessionStore
        dry_run: bool = options["dry_run"]
        batch_size: int | None = options["batch_size"]
        verbosity: int = options["verbosity"]
        if batch_size is not None and batch_size < 1:
            raise CommandError("--batch-size must be a positive integer.")
        try:
            if hasattr(store, "purge"):
                on_batch = None
                if verbosity >= 1 and not dry_run and self.stdout.isatty():
                    on_batch = self._progress_bar(store.purge(dry_run=True))
                count = store.purge(dry_run=dry_run, batch_size=batch_size, on_batch=on_batch)
                if on_batch is not None:
                    self.stdout.write("")  # end the bar's line
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
        if verbosity < 1:
            return
        if count is None:
            self.stdout.write("Expired sessions purged.")
        elif dry_run:
            self.stdout.write(f"{count} expired session(s) would be purged.")
        else:
            self.stdout.write(self.style.SUCCESS(f"Purged {count} expired session(s)."))

    def _progress_bar(self, total: int) -> Any:
        """Return an ``on_batch`` callback drawing a bar on the terminal, in place."""

        def draw(done: int) -> None:
            share = min(done / total, 1.0) if total else 1.0
            filled = round(share * BAR_WIDTH)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self.stdout.write(f"\r[{bar}] {share:4.0%} {done}/{total}", ending="")
            self.stdout.flush()

        draw(0)
        return draw
