"""Parse ``STATEMODES_STATE_CONNECTION`` (ASP.NET ``stateConnectionString``)."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

DEFAULT_PORT = 42424  # aspnet_state.exe's port


class Address(NamedTuple):
    host: str
    port: int
    #: ``tls=host:port``: the link is encrypted (the server runs with ``--tls-cert``). Not part of
    #: ``str()``: a server's place in a farm's hashing does not change when TLS is turned on.
    tls: bool = False
    #: ``tcpip=host:port#name``: the server's id in a farm. When given, it alone places keys
    #: (``placement``), so the server may change address without moving its sessions.
    name: str = ""

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``tcpip=host:port``, ``tls=host:port``, ``host:port``, ``[::1]:port`` or ``host``
    (port 42424), each optionally followed by ``#name`` (the server's id in a farm).

    Raises ValueError with a message naming the bad part.
    """
    value, has_name, name = text.strip().partition("#")
    if has_name and not (name and name.isascii() and name.isprintable() and " " not in name):
        raise ValueError(f"empty or unprintable server id after '#' in {text!r}")
    tls = value.lower().startswith("tls=")
    if tls:
        value = value[len("tls=") :]
    elif value.lower().startswith("tcpip="):
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
        return Address(host, DEFAULT_PORT, tls, name)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r} in state server address {text!r}")
    return Address(host, int(port_text), tls, name)


def placement(address: Address) -> str:
    """Return what places keys on ``address`` in a farm: its ``#name``, or its normalised address.

    Every web server must place a key on the same server however it spells the address, so
    the hostname is lowercased (DNS names are case-insensitive) without a trailing dot,
    ``localhost`` is ``127.0.0.1`` (what it resolves to, without asking a resolver whose
    answer could differ between web servers) and IP literals take their canonical form. Other
    names are not resolved: name the servers (``#name``) when web servers reach them by
    different names.
    """
    if address.name:
        return address.name
    host = address.host.lower().rstrip(".")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        host = _canonical_ip(ipaddress.ip_address(host))
    except ValueError:
        pass  # a hostname
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"


def _canonical_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The IP's compressed form, the same on every Python: 3.13 writes an IPv4-mapped IPv6
    address as ``::ffff:127.0.0.1`` where earlier versions wrote ``::ffff:7f00:1``, and web
    servers on both must place keys alike."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        mapped = int(ip.ipv4_mapped)
        return f"::ffff:{mapped >> 16:x}:{mapped & 0xFFFF:x}"
    return ip.compressed


def endpoint(address: Address) -> str:
    """Return where ``address`` connects, normalised: one server however it is spelt or named."""
    return placement(address._replace(name=""))


def parse_connection(text: str) -> list[Address]:
    """Parse one or several ``;``-separated addresses (several servers partition sessions)."""
    parts = [p for p in text.split(";") if p.strip()]
    if not parts:
        raise ValueError("no state server address given")
    return [parse_address(p) for p in parts]
