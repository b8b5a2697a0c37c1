"""Command-line options of the state server, shared by ``python -m`` and ``runstateserver``."""

from __future__ import annotations

import argparse
import json
import os
import stat
from typing import Any

from .appendonly import DEFAULT_REWRITE_SIZE
from .protocol import PROTOCOL_VERSION
from .server import DEFAULT_MAX_APPLICATIONS, DEFAULT_MAX_TIMEOUT, LOOPS, ServerConfig

__all__ = [
    "MIN_SECRET_BYTES",
    "SECRET_ENV",
    "SECRET_HINT",
    "add_arguments",
    "build_config",
    "format_stats",
    "parse_size",
]

SECRET_ENV = "STATEMODES_STATE_SECRET"
#: Shortest secret the server accepts. A captured handshake lets anyone search for the secret
#: offline (issue 13: 4 characters fell in 1.8 s); Redis's ``requirepass`` documentation asks
#: for a long random password for the same reason. 32 random bytes defeat any such search.
MIN_SECRET_BYTES = 32
SECRET_HINT = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(text: str) -> int:
    """Parse ``1073741824``, ``512M`` or ``2G`` (binary units) into bytes."""
    value = text.strip().upper().removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: len(value) - len(unit)]
    try:
        size = int(float(number) * _UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use bytes, or K, M, G") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return size


def add_arguments(parser: Any, *, with_address: bool = True) -> None:
    """Add the server's options to an argparse (or Django command) parser."""
    if with_address:
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
        parser.add_argument("--port", type=int, default=42424, help="port (42424, as ASP.NET)")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback address (ASP.NET AllowRemoteConnection); needs a secret, "
        "and --tls-cert unless --insecure-allow-plaintext",
    )
    parser.add_argument(
        "--secret-file",
        help=f"file holding the shared secret (else the {SECRET_ENV} environment variable)",
    )
    parser.add_argument(
        "--app-secrets",
        help="file of 'application:secret' lines: a client proving an application's secret may "
        "use that application only (not readable by other users)",
    )
    parser.add_argument("--tls-cert", help="serve TLS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", help="the certificate's private key (PEM), if not in it")
    parser.add_argument(
        "--tls-client-ca",
        help="require client certificates signed by this CA (PEM): mutual TLS",
    )
    parser.add_argument(
        "--insecure-allow-plaintext",
        action="store_true",
        help="allow a non-loopback address without TLS (sessions then cross the network in clear)",
    )
    parser.add_argument("--snapshot", help="keep sessions in this file over restarts")
    parser.add_argument(
        "--snapshot-interval", type=float, default=60.0, help="seconds between snapshots (60)"
    )
    parser.add_argument(
        "--appendonly",
        action="store_true",
        help="also log every write to PATH.aof beside --snapshot PATH before answering it, "
        "fsynced every second (Redis's appendonly yes, appendfsync everysec)",
    )
    parser.add_argument(
        "--appendonly-rewrite-size",
        type=parse_size,
        default=DEFAULT_REWRITE_SIZE,
        help="rewrite the log into the snapshot once it is this large and larger than the "
        "snapshot (64M)",
    )
    parser.add_argument(
        "--max-memory",
        type=parse_size,
        help="most bytes held for clients, e.g. 2G: payloads, keys and a measured overhead "
        "per session and per application; writes past it are refused (STORE_FULL)",
    )
    parser.add_argument(
        "--max-timeout",
        type=int,
        default=DEFAULT_MAX_TIMEOUT,
        help=f"longest session timeout in seconds; longer ones from clients are capped "
        f"({DEFAULT_MAX_TIMEOUT}: 7 days)",
    )
    parser.add_argument(
        "--max-applications",
        type=int,
        default=DEFAULT_MAX_APPLICATIONS,
        help=f"most application names holding sessions at once; writes of a new one past it "
        f"are refused ({DEFAULT_MAX_APPLICATIONS})",
    )
    parser.add_argument(
        "--purge-interval",
        type=float,
        default=60.0,
        help="seconds between sweeps of expired sessions (60; 0 leaves it to purge_sessions)",
    )
    parser.add_argument(
        "--frame-timeout",
        type=float,
        default=30.0,
        help="seconds a client may take to finish a started frame (30)",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=5.0,
        help="seconds a new connection has to complete its handshake (5)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="most open connections; more are closed at once (default: the open-file limit "
        "minus 64, at most 10000)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        help="seconds of silence before an authenticated connection is closed (300; 0: never)",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help="event loop: auto (uvloop if installed, else asyncio), asyncio or uvloop",
    )
    parser.add_argument(
        "--protocol-version",
        type=int,
        default=None,
        help="speak at most this protocol version (1 or 2), to try clients against an older "
        "server; the latest by default",
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="print the statistics of the server running at the address, then exit",
    )


def read_secret(secret_file: str | None) -> bytes | None:
    """Return the secret from ``--secret-file`` or the environment, stripped; None if unset."""
    if secret_file:
        with open(secret_file, "rb") as stream:
            secret = stream.read().strip()
        if not secret:
            raise ValueError(f"the secret file {secret_file} is empty")
        return secret
    value = os.environ.get(SECRET_ENV, "").strip()
    return value.encode() if value else None


def strong_secret(secret: bytes | None) -> bytes | None:
    """Return the secret, or raise ValueError if it is shorter than MIN_SECRET_BYTES."""
    if secret is not None and len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the shared secret ({SECRET_ENV} or --secret-file) is {len(secret)} bytes long; "
            f"at least {MIN_SECRET_BYTES} bytes are required: {SECRET_HINT}"
        )
    return secret


def read_app_secrets(path: str | None) -> dict[str, bytes]:
    """Read ``--app-secrets``: ``application:secret`` lines, ``#`` comments and blank lines.

    Refused (ValueError): a file other users may read or write (ssh's rule for its keys), a
    line without ``:``, an application named twice, a secret shorter than MIN_SECRET_BYTES.
    """
    if not path:
        return {}
    mode = os.stat(path).st_mode
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ValueError(
            f"--app-secrets {path} is readable or writable by every user (mode "
            f"{stat.S_IMODE(mode):o}): chmod 600 {path}"
        )
    secrets: dict[str, bytes] = {}
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, 1):
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            name, sep, secret = line.partition(b":")
            application = name.strip().decode("utf-8", "replace")
            if not sep or not application:
                raise ValueError(
                    f"--app-secrets {path}, line {number}: expected 'application:secret'"
                )
            if application in secrets:
                raise ValueError(
                    f"--app-secrets {path}, line {number}: {application!r} named twice"
                )
            try:
                secrets[application] = strong_secret(secret.strip()) or b""
            except ValueError:
                raise ValueError(
                    f"--app-secrets {path}, line {number}: the secret of {application!r} is "
                    f"shorter than {MIN_SECRET_BYTES} bytes: {SECRET_HINT}"
                ) from None
    if not secrets:
        raise ValueError(f"--app-secrets {path} names no application")
    return secrets


def build_config(options: dict[str, Any], host: str, port: int) -> ServerConfig:
    """Build a ServerConfig from parsed options; raise ValueError with a clear message."""
    return ServerConfig(
        host=host,
        port=port,
        allow_remote=options["allow_remote"],
        secret=strong_secret(read_secret(options.get("secret_file"))),
        snapshot=options.get("snapshot"),
        snapshot_interval=options["snapshot_interval"],
        max_memory=options.get("max_memory"),
        max_timeout=options.get("max_timeout", DEFAULT_MAX_TIMEOUT),
        max_applications=options.get("max_applications", DEFAULT_MAX_APPLICATIONS),
        purge_interval=options["purge_interval"],
        frame_timeout=options["frame_timeout"],
        handshake_timeout=options.get("handshake_timeout", 5.0),
        max_connections=options.get("max_connections"),
        idle_timeout=options.get("idle_timeout", 300.0),
        appendonly=options.get("appendonly", False),
        appendonly_rewrite_size=options.get("appendonly_rewrite_size", DEFAULT_REWRITE_SIZE),
        loop=options.get("loop") or "auto",
        tls_cert=options.get("tls_cert"),
        tls_key=options.get("tls_key"),
        tls_client_ca=options.get("tls_client_ca"),
        insecure_allow_plaintext=options.get("insecure_allow_plaintext", False),
        app_secrets=read_app_secrets(options.get("app_secrets")),
        protocol_version=options.get("protocol_version") or PROTOCOL_VERSION,
    )


def format_stats(stats: dict[str, Any]) -> str:
    """Render the STATS reply for a terminal."""
    lines = [
        f"sessions:              {stats['sessions']}",
        f"signed-in sessions:    {stats.get('bound_sessions', 0)}",
        f"bytes:                 {stats['bytes']}"
        + (f" of {stats['max_memory']}" if stats.get("max_memory") else ""),
        f"locks:                 {stats['locks']}",
        f"waiters:               {stats['waiters']}",
        f"connections:           {stats['connections']}",
        f"operations/s:          {stats['operations_per_second']}",
        f"operations:            {stats['operations']}",
        f"uptime (s):            {stats['uptime']}",
        f"snapshot:              {stats.get('snapshot') or 'off'}",
        f"append-only log:       {stats.get('appendonly') or 'off'}",
        "applications:          " + json.dumps(stats.get("applications", {})),
    ]
    return "\n".join(lines)
