"""``python -m django_statemodes.stateserver`` and the ``statemodes-stateserver`` script.

Runs without Django settings: everything comes from the command line and the environment.
"""

from __future__ import annotations

import argparse
import logging
import sys

from django_statemodes import __version__

from .addresses import Address
from .errors import SnapshotError
from .options import add_arguments, build_config, format_stats, read_secret
from .server import run


def main(argv: list[str] | None = None) -> int:
    """Run the state server until SIGTERM/SIGINT (or print ``--stats``); return the exit code."""
    parser = argparse.ArgumentParser(
        prog="statemodes-stateserver",
        description="The django-statemodes state server (ASP.NET's aspnet_state).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_arguments(parser)
    parser.add_argument("--application", default="default", help="namespace for --stats")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (INFO)")
    options = vars(parser.parse_args(argv))
    logging.basicConfig(
        level=options["log_level"].upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if options["stats"]:
        return print_stats(
            Address(options["host"], options["port"]),
            secret=read_secret(options["secret_file"]),
            application=options["application"],
        )
    try:
        config = build_config(options, options["host"], options["port"])
        run(config)
    except (ValueError, OSError, SnapshotError) as exc:
        print(f"statemodes-stateserver: error: {exc}", file=sys.stderr)
        return 2
    return 0


def print_stats(address: Address, *, secret: bytes | None, application: str) -> int:
    """Connect to a running server, print its statistics; 1 if it cannot be reached."""
    from django_statemodes.exceptions import StateServerError

    from .client import StateServerClient

    client = StateServerClient(address, timeout=5, secret=secret, application=application)
    try:
        stats = client.stats()
    except StateServerError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"State server at {address}")
    print(format_stats(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
