"""TLS for the state server's link, on the standard ``ssl`` module (Redis's ``tls-*`` options).

Django-free: the daemon builds its server context here from the command line, the Django side
its client context from the ``STATEMODES_STATE_TLS_*`` settings. TLS 1.2 is the oldest version
either side speaks (what Redis and PostgreSQL's ``ssl_min_protocol_version`` default to).
"""

from __future__ import annotations

import ssl

__all__ = ["MINIMUM_VERSION", "client_context", "server_context"]

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def server_context(
    certfile: str, keyfile: str | None = None, client_ca: str | None = None
) -> ssl.SSLContext:
    """The daemon's context: its certificate chain and key; with ``client_ca``, mutual TLS.

    With a client CA every client must present a certificate that CA signed (PostgreSQL's
    ``clientcert=verify-ca``); the handshake fails otherwise, before a byte of the protocol.
    Raises OSError (a missing file) or ssl.SSLError (a bad one, or a key that does not match).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.load_cert_chain(certfile, keyfile)
    if client_ca:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    cafile: str, certfile: str | None = None, keyfile: str | None = None
) -> ssl.SSLContext:
    """A client's context: trust ``cafile`` only, check the host name, present a certificate if
    given (for a server started with ``--tls-client-ca``)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = MINIMUM_VERSION
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    return context
