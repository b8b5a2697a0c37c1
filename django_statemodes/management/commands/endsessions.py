"""``manage.py endsessions``: end a user's sessions (or everyone's) at once."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_statemodes import sessions


class Command(BaseCommand):
    help = (
        "End every session of a user (--user NAME), or of every user with a session "
        "(--all-users), at once; needs STATEMODES_USER_INDEX. Ending sends session_end."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--user", help="The username (USERNAME_FIELD) whose sessions to end.")
        who.add_argument(
            "--all-users",
            action="store_true",
            help="End the sessions of every signed-in user (anonymous sessions are kept).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="List the sessions that would end; end none."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if not sessions.engine_indexes_users():
                # Ask the API for its error: it names what is missing.
                sessions.user_sessions("0")
        except (ImproperlyConfigured, NotImplementedError) as exc:
            raise CommandError(str(exc)) from None
        dry_run: bool = options["dry_run"]
        if options["all_users"]:
            user_ids = self._signed_in_users()
        else:
            user_ids = [self._user_id(options["user"])]
        total = 0
        for user_id in user_ids:
            infos = sessions.user_sessions(user_id)
            if dry_run:
                for info in infos:
                    # A key prefix only: a session key is a credential, never printed whole.
                    self.stdout.write(
                        f"would end {info.session_key[:8]}... of user {user_id} "
                        f"({info.user_agent or 'unknown browser'}, {info.ip or 'no IP'})"
                    )
                total += len(infos)
            else:
                total += sessions.end_user_sessions(user_id)
        verb = "Would end" if dry_run else "Ended"
        self.stdout.write(f"{verb} {total} session(s) of {len(user_ids)} user(s).")

    def _user_id(self, name: str) -> str:
        model = get_user_model()
        try:
            user = model._default_manager.get_by_natural_key(name)
        except model.DoesNotExist:
            raise CommandError(f"No user {name!r}.") from None
        return str(user.pk)

    def _signed_in_users(self) -> list[str]:
        # The admin listing pages through every live session: a scan, fine for a command.
        provider = sessions.provider()
        user_ids: set[str] = set()
        offset, page = 0, 1000
        while True:
            infos, total = provider.list_sessions(offset=offset, limit=page)
            user_ids.update(info.user_id for info in infos if info.user_id)
            offset += page
            if not infos or offset >= total:
                return sorted(user_ids)
