"""``manage.py runstateserver [addr:port]``: run the state server with the site's settings."""

from __future__ import annotations

import logging
import os
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_statemodes import __version__
from django_statemodes.conf import conf
from django_statemodes.exceptions import SnapshotError, StateServerError
from django_statemodes.providers.stateserver import StateServerProvider
from django_statemodes.stateserver.addresses import Address, parse_address, parse_connection
from django_statemodes.stateserver.client import StateServerClient
from django_statemodes.stateserver.options import add_arguments, build_config, format_stats
from django_statemodes.stateserver.server import run


class Command(BaseCommand):
    help = (
        "Run the session state server (ASP.NET's aspnet_state) at the first address of "
        "STATEMODES_STATE_CONNECTION, or at addr:port. Stops on SIGTERM or Ctrl-C."
    )
    requires_system_checks: list[str] = []

    def get_version(self) -> str:
        """``--version`` shows the package's version, not Django's."""
        return f"django-statemodes {__version__}"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "addrport", nargs="?", help="host:port to listen on (default: from settings)"
        )
        add_arguments(parser, with_address=False)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["addrport"]:
                address = parse_address(options["addrport"])
            else:
                address = parse_connection(conf.STATEMODES_STATE_CONNECTION)[0]
        except ValueError as exc:
            raise CommandError(f"Bad state server address: {exc}") from exc
        if options["stats"]:
            if options["addrport"]:
                self._print_stats(address)
            else:
                self._print_farm_stats()
            return
        if not options.get("secret_file") and conf.STATEMODES_STATE_SECRET:
            # The site's own secret, so one settings file serves the web and the server.
            os.environ.setdefault("STATEMODES_STATE_SECRET", conf.STATEMODES_STATE_SECRET)
        # A daemon reports its start, snapshots and stop: INFO, through the site's LOGGING
        # handlers if it has some, else to stderr.
        server_logger = logging.getLogger("django_statemodes.stateserver")
        server_logger.setLevel(logging.DEBUG if options["verbosity"] > 1 else logging.INFO)
        if not server_logger.hasHandlers():
            logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            config = build_config(options, address.host, address.port)
            run(config)
        except (ValueError, OSError, SnapshotError) as exc:
            raise CommandError(str(exc)) from exc

    def _print_stats(self, address: Address) -> None:
        """The statistics of the server at ``addrport`` (a plain link: the site's secret)."""
        client = StateServerClient(
            address,
            timeout=conf.STATEMODES_STATE_NETWORK_TIMEOUT,
            application=conf.STATEMODES_APPLICATION_NAME,
            secret=conf.STATEMODES_STATE_SECRET,
        )
        try:
            stats = client.stats()
        except StateServerError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            client.close()
        self.stdout.write(f"State server at {address}")
        self.stdout.write(format_stats(stats))

    def _print_farm_stats(self) -> None:
        """The statistics of every server of STATEMODES_STATE_CONNECTION, reached as the site
        reaches them (secret, TLS settings for ``tls=`` addresses)."""
        provider = StateServerProvider()
        try:
            by_server = provider.stats()
        except (StateServerError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from exc
        finally:
            provider.close()
        for server, stats in by_server.items():
            self.stdout.write(f"State server at {server}")
            self.stdout.write(format_stats(stats))
