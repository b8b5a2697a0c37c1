"""Parse ``STATEMODES_STATE_CONNECTION`` (ASP.NET ``stateConnectionString``)."""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_PORT = 42424  # aspnet_state.exe's port


class Address(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``tcpip=host:port``, ``host:port``, ``[::1]:port`` or ``host`` (port 42424).

    Raises ValueError with a message naming the bad part.
    """
    value = text.strip()
    if value.lower().startswith("tcpip="):
        value = value[len("tcpip=") :]
    if not value:
        raise ValueError(f"empty state server address in {text!r}")
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep:
            raise ValueError(f"unclosed '[' in state server address {text!r}")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']' in {text!r}")
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if host.lower() == "loopback":  # ASP.NET's default spelling: tcpip=loopback:42424
        host = "127.0.0.1"
    if not host:
        raise ValueError(f"missing host in state server address {text!r}")
    if not port_text:
        return Address(host, DEFAULT_PORT)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r} in state server address {text!r}")
    return Address(host, int(port_text))


def parse_connection(text: str) -> list[Address]:
    """Parse one or several ``;``-separated addresses (several servers partition sessions)."""
    parts = [p for p in text.split(";") if p.strip()]
    if not parts:
        raise ValueError("no state server address given")
    return [parse_address(p) for p in parts]
