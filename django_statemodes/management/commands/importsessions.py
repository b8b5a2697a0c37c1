"""``manage.py importsessions --from ENGINE``: keep users logged in across a switch of engine."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.exceptions import SessionImportError, SessionStoreUnavailable
from django_statemodes.importing import DJANGO, ImportResult, import_sessions, live_sessions

# Redraw the progress line every this many sessions: a terminal redraw per session would cost
# more than the copy.
PROGRESS_EVERY = 100


class Command(BaseCommand):
    help = (
        "Copy the live sessions of one of Django's session engines (db, cached_db, file, "
        "cache) into the configured SESSION_ENGINE, keeping their keys and the time they have "
        "left, so that switching engines logs nobody out. Sessions already in the configured "
        "store are left alone."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--from",
            dest="source",
            required=True,
            help=f"The engine the sessions are in, e.g. {DJANGO}db.",
        )
        parser.add_argument(
            "--database",
            default="default",
            help="The database of Django's django_session table (db and cached_db).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be copied; copy nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        source: str = options["source"]
        verbosity: int = options["verbosity"]
        store = import_module(settings.SESSION_ENGINE).SessionStore
        if not issubclass(store, StateModeSessionBase):
            raise CommandError(
                f"SESSION_ENGINE is {settings.SESSION_ENGINE!r}: set it to one of "
                "django-statemodes' engines, the one to import into."
            )
        if source == settings.SESSION_ENGINE:
            raise CommandError("--from names the configured engine: there is nothing to copy.")
        progress = None
        if verbosity >= 1 and self.stdout.isatty():
            progress = self._progress
        try:
            sessions = live_sessions(source, database=options["database"])
            result = import_sessions(
                sessions, store, dry_run=options["dry_run"], on_session=progress
            )
        except (SessionImportError, SessionStoreUnavailable) as exc:
            raise CommandError(str(exc)) from exc
        if progress is not None:
            self.stdout.write("")  # end the progress line
        if verbosity >= 1:
            verb = "would be copied" if options["dry_run"] else "copied"
            self.stdout.write(
                self.style.SUCCESS(
                    f"{result.found} live session(s) in {source}: {result.imported} {verb}, "
                    f"{result.present} already in {settings.SESSION_ENGINE}, "
                    f"{result.skipped} skipped (empty, or refused by the serializer)."
                )
            )

    def _progress(self, result: ImportResult) -> None:
        if result.found % PROGRESS_EVERY == 0:
            self.stdout.write(
                f"\r{result.found} read, {result.imported} copied, {result.present} present",
                ending="",
            )
            self.stdout.flush()
