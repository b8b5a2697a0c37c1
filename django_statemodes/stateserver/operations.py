"""What the state server's clients say and how they read the answers, written once for both.

Each operation is an ``Op``: a function building its request for a request id, and a function
reading its reply. The handshake is a generator that yields what to send and receives what came
back. ``client.py``'s blocking and asyncio clients only move bytes (and reconnect or time out), so
they cannot drift apart: there is one copy of every request, reply check and error message.

Client side only (it raises ``django_statemodes.exceptions``); the daemon never imports it.
"""

from __future__ import annotations

import enum
import hmac
import secrets
import ssl
from collections.abc import Callable, Generator
from typing import Any, Concatenate, Final, Generic, Literal, ParamSpec, TypeVar

from django_statemodes.exceptions import (
    StateServerError,
    StateServerFull,
    StateServerProtocolError,
    StateServerUnavailable,
)
from django_statemodes.items import ExpiredItem, SessionInfo, StateItem

from . import protocol as p
from .addresses import Address

__all__ = [
    "BIND_USER",
    "CREATE_UNINITIALIZED",
    "LIST_SESSIONS",
    "SESSION_INFO",
    "ServerTooOld",
    "TOUCH_USER",
    "UNBIND_USER",
    "GET",
    "GET_EXCLUSIVE",
    "MORE",
    "PART",
    "PING",
    "PURGE",
    "RELEASE",
    "REMOVE",
    "RESET_TIMEOUT",
    "SET_AND_RELEASE",
    "STATS",
    "Broken",
    "Handshake",
    "Op",
    "another_request",
    "closed_by_server",
    "error",
    "handshake",
    "handshake_failed",
    "lost",
    "next_request_id",
    "no_answer",
    "tls_failed",
    "purge_expired",
    "unavailable",
    "wait",
]

P = ParamSpec("P")
T = TypeVar("T")
E = TypeVar("E", bound=p.Event)

SETTING = "STATEMODES_STATE_CONNECTION"
SECRET_SETTING = "STATEMODES_STATE_SECRET"
TLS_CA_SETTING = "STATEMODES_STATE_TLS_CA"
TLS_CERT_SETTING = "STATEMODES_STATE_TLS_CERT"


class Broken(Exception):
    """A connection failed in a way that a fresh connection may fix."""


# Errors: how every failure reads, whichever client met it.


def unavailable(address: Address, reason: str) -> StateServerUnavailable:
    """The error a site answers with a 503 (ASP.NET's "Unable to make ... request")."""
    return StateServerUnavailable(
        f"Unable to make the session state request to the state server at {address}: {reason}. "
        "Please ensure that the state server is running (manage.py runstateserver or "
        f"statemodes-stateserver) and that {SETTING} names its address and port; a server on "
        "another machine must run with --allow-remote and the same STATEMODES_STATE_SECRET.",
        setting=SETTING,
    )


def tls_failed(address: Address, exc: BaseException) -> StateServerUnavailable:
    """The TLS handshake of a ``tls=`` address failed: name the settings that decide it."""
    return StateServerUnavailable(
        f"Unable to make the session state request to the state server at {address}: the TLS "
        f"handshake failed ({exc}). Check that {TLS_CA_SETTING} names the CA that signed the "
        f"server's certificate (--tls-cert), that the host in {SETTING} is one of the "
        f"certificate's names, and, for a server started with --tls-client-ca, that "
        f"{TLS_CERT_SETTING} and STATEMODES_STATE_TLS_KEY hold a client certificate that CA "
        "signed; a server without --tls-cert needs a tcpip= address.",
        setting=TLS_CA_SETTING,
    )


def handshake_failed(address: Address, exc: BaseException) -> StateServerUnavailable:
    """A connection failed before READY. An SSL error there is TLS's (a TLS 1.3 server refuses
    a client certificate after the client's side of the TLS handshake is done)."""
    if isinstance(exc, ssl.SSLError):
        return tls_failed(address, exc)
    if address.tls and isinstance(exc, Broken):
        # Under TLS 1.3 a client learns that its certificate was refused only as a closed
        # connection, on its first read.
        failure = unavailable(
            address,
            f"handshake failed ({exc}); a server started with --tls-client-ca closes a client "
            f"whose certificate ({TLS_CERT_SETTING}, STATEMODES_STATE_TLS_KEY) is missing or "
            "not signed by that CA",
        )
        failure.setting = TLS_CERT_SETTING
        return failure
    return unavailable(address, f"handshake failed ({exc})")


def no_answer(address: Address, seconds: float) -> StateServerUnavailable:
    return unavailable(address, f"no answer within {seconds} s (STATEMODES_STATE_NETWORK_TIMEOUT)")


def lost(address: Address, exc: BaseException) -> StateServerUnavailable:
    return unavailable(address, f"connection lost ({exc})")


def another_request(address: Address) -> StateServerProtocolError:
    return StateServerProtocolError(f"{address} answered another request")


def error(address: Address, event: p.Error) -> StateServerError:
    """The exception an ERROR reply stands for."""
    if event.code == p.ErrorCode.STORE_FULL:
        return StateServerFull(f"The state server at {address} refused a write: {event.message}")
    if event.code in (p.ErrorCode.AUTH_FAILED, p.ErrorCode.AUTH_REQUIRED):
        return StateServerUnavailable(
            f"The state server at {address} refused the connection: {event.message}. Check "
            "that STATEMODES_STATE_SECRET matches the server's --secret-file or "
            "STATEMODES_STATE_SECRET, or, on a server with --app-secrets, the secret of "
            "STATEMODES_APPLICATION_NAME there.",
            setting=SECRET_SETTING,
        )
    if event.code == p.ErrorCode.SHUTTING_DOWN:
        return unavailable(address, event.message)
    if event.code == p.ErrorCode.UNSUPPORTED_VERSION and event.request_id:
        return StateServerProtocolError(
            f"The state server at {address} refused a request of a newer protocol: "
            f"{event.message}. Upgrade the state server to this django-statemodes release."
        )
    return StateServerProtocolError(
        f"The state server at {address} answered error {event.code}: {event.message}"
    )


def closed_by_server(address: Address, event: p.Error) -> Exception:
    """What an ERROR with request id 0 (the server closes the connection) means to a request.

    SHUTTING_DOWN is ``Broken``: a kept connection is retried once on a fresh one, to the
    restarted server. Any other such error would recur on a fresh connection: it is raised.
    """
    if event.code == p.ErrorCode.SHUTTING_DOWN:
        return Broken(event.message)
    return error(address, event)


def next_request_id(previous: int) -> int:
    # 1 to 2**32 - 1, wrapping: 0 is reserved for handshake frames and connection errors.
    return previous % 0xFFFFFFFF + 1


# Operations.


class More(enum.Enum):
    MORE = "MORE"


#: What ``Op.interpret`` returns for a part of a reply in parts: read the next part.
MORE: Final = More.MORE

#: The one reply that comes in parts: EXPIRED batches, ended by PURGE_EXPIRED's RESULT.
PART: Final = p.ExpiredBatch


class Op(Generic[P, T]):
    """One operation: ``make(request_id, *args)`` builds its request, ``interpret`` its result.

    ``interpret(address, reply)`` sees every reply but ERROR (which the client raises as
    ``error()``) and returns the result, or ``MORE`` for a ``PART`` (then ``parts`` is True).
    ``hold`` is how long the server may keep the reply beyond the network timeout (WAIT's own
    timeout).
    """

    __slots__ = ("hold", "interpret", "make", "parts", "version")

    def __init__(
        self,
        make: Callable[Concatenate[int, P], p.Request],
        interpret: Callable[[Address, p.Event], T | Literal[More.MORE]],
        *,
        hold: float = 0.0,
        parts: bool = False,
        version: int = p.MIN_PROTOCOL_VERSION,
    ) -> None:
        self.make = make
        self.interpret = interpret
        self.hold = hold
        self.parts = parts
        #: The protocol version the request needs (checked before it is sent).
        self.version = version


class ServerTooOld(StateServerProtocolError):
    """The server speaks an older protocol version, without the request asked for."""


def too_old(address: Address, spoken: int, op: Op[Any, Any]) -> StateServerProtocolError:
    """A request the connection's protocol version lacks: the server is older than the client."""
    return ServerTooOld(
        f"The state server at {address} speaks protocol version {spoken}, and this request "
        f"needs version {op.version} (the index of sessions by user, STATEMODES_USER_INDEX): "
        "upgrade the state server to this django-statemodes release, or turn the setting off. "
        "Everything else keeps working with the older server."
    )


def expect(address: Address, reply: p.Event, kind: type[E]) -> E:
    if not isinstance(reply, kind):
        raise StateServerProtocolError(
            f"{address} answered {type(reply).__name__} where {kind.__name__} was expected"
        )
    return reply


def raw(address: Address, reply: p.Event) -> p.Event:
    """The reply itself (``call``'s requests)."""
    return reply


def state_item(address: Address, reply: p.Event) -> StateItem | None:
    if isinstance(reply, p.NotFound):
        return None
    item = expect(address, reply, p.Item)
    return StateItem(
        data=item.data,
        locked=item.locked,
        lock_id=item.lock_id,
        lock_age=item.lock_age,
        initialize=item.initialize,
    )


def flag(address: Address, reply: p.Event) -> bool:
    return bool(expect(address, reply, p.Result).value)


def count(address: Address, reply: p.Event) -> int:
    return expect(address, reply, p.Result).value


def done(address: Address, reply: p.Event) -> None:
    expect(address, reply, p.Result)


def released(address: Address, reply: p.Event) -> bool:
    return expect(address, reply, p.Released).released


def payload(address: Address, reply: p.Event) -> bytes:
    return expect(address, reply, p.Pong).payload


def stats_of(address: Address, reply: p.Event) -> dict[str, Any]:
    return expect(address, reply, p.StatsReply).stats


# The request is built from the client method's arguments (checked against the event's fields):
# one static ``Op`` per operation, nothing built per call on the hot path but the event itself.
GET: Final = Op(p.Get, state_item)
GET_EXCLUSIVE: Final = Op(p.GetExclusive, state_item)
SET_AND_RELEASE: Final = Op(p.SetAndRelease, flag)
RELEASE: Final = Op(p.Release, done)
REMOVE: Final = Op(p.Remove, flag)
RESET_TIMEOUT: Final = Op(p.ResetTimeout, done)
CREATE_UNINITIALIZED: Final = Op(p.CreateUninitialized, flag)
PING: Final = Op(p.Ping, payload)
STATS: Final = Op(p.Stats, stats_of)
PURGE: Final = Op(p.Purge, count)


def sessions_page(address: Address, reply: p.Event) -> tuple[list[SessionInfo], int]:
    page = expect(address, reply, p.Sessions)
    return [
        SessionInfo(
            session_key=entry.key,
            user_id=entry.user_id,
            created=entry.created,
            last_seen=entry.last_seen,
            expires=entry.expires,
            ip=entry.ip,
            user_agent=entry.user_agent,
            locked=entry.locked,
            lock_age=entry.lock_age,
            size=entry.size,
        )
        for entry in page.sessions
    ], page.total


BIND_USER: Final = Op(p.BindUser, flag, version=p.USER_INDEX_VERSION)
TOUCH_USER: Final = Op(p.TouchUser, flag, version=p.USER_INDEX_VERSION)
UNBIND_USER: Final = Op(p.UnbindUser, flag, version=p.USER_INDEX_VERSION)
LIST_SESSIONS: Final = Op(p.ListSessions, sessions_page, version=p.USER_INDEX_VERSION)


def one_session(address: Address, reply: p.Event) -> SessionInfo | None:
    sessions, _ = sessions_page(address, reply)
    return sessions[0] if sessions else None


SESSION_INFO: Final = Op(p.SessionInfoRequest, one_session, version=p.USER_INDEX_VERSION)


# Built per call: they carry more than the request (a callback, a longer wait for the reply).


def purge_expired(on_expired: Callable[[ExpiredItem], None] | None, dry_run: bool) -> Op[[], int]:
    def interpret(address: Address, reply: p.Event) -> int | Literal[More.MORE]:
        if isinstance(reply, PART):  # only asked for with_data; the RESULT comes last
            if on_expired is not None:
                for key, data in reply.items:
                    on_expired(ExpiredItem(key, data))
            return MORE
        return count(address, reply)

    return Op(
        lambda rid: p.PurgeExpired(rid, on_expired is not None, dry_run), interpret, parts=True
    )


def wait(key: str, lock_id: int, timeout: float) -> Op[[], bool]:
    # The server answers WAIT when the lock ends or after ``timeout``: the reply may take that long.
    return Op(lambda rid: p.Wait(rid, key, lock_id, timeout), released, hold=timeout)


# The handshake.

#: Yields the event to send before the next one is read (None: send nothing), receives that one.
Handshake = Generator[p.Hello | None, p.Event, None]


def handshake(address: Address, application: str, secret: bytes | None) -> Handshake:
    """The client's half: WELCOME in, HELLO out, READY in (docs/stateserver-protocol.md)."""
    client_nonce = secrets.token_bytes(p.NONCE_SIZE)
    welcome = yield None  # the server speaks first
    if not isinstance(welcome, p.Welcome):
        raise StateServerProtocolError(f"{address} did not greet with WELCOME")
    # The highest version both speak: a newer client keeps working with an older server, and
    # only the requests the older version lacks are refused (``too_old``).
    version = min(p.PROTOCOL_VERSION, welcome.max_version)
    if version < max(welcome.min_version, p.MIN_PROTOCOL_VERSION):
        raise StateServerProtocolError(
            f"the state server at {address} speaks protocol versions "
            f"{welcome.min_version}-{welcome.max_version}, this client "
            f"{p.MIN_PROTOCOL_VERSION}-{p.PROTOCOL_VERSION}: upgrade the older side"
        )
    if welcome.auth_required and secret is None:
        raise StateServerUnavailable(
            f"The state server at {address} requires a shared secret: set "
            "STATEMODES_STATE_SECRET to the server's secret.",
            setting=SECRET_SETTING,
        )
    if secret is not None and not welcome.auth_required:
        # A server that does not know the secret cannot prove it is ours.
        raise StateServerUnavailable(
            f"The state server at {address} does not use a shared secret but "
            "STATEMODES_STATE_SECRET is set: start it with --secret-file, or unset the "
            "setting.",
            setting=SECRET_SETTING,
        )
    proof = b""
    if secret is not None:
        proof = p.client_proof(secret, welcome.nonce, client_nonce, application)
    ready = yield p.Hello(version, application, client_nonce, proof)
    if isinstance(ready, p.Error):
        raise error(address, ready)
    if not isinstance(ready, p.Ready):
        raise StateServerProtocolError(f"{address} did not answer HELLO with READY")
    if secret is not None:
        expected = p.server_proof(secret, welcome.nonce, client_nonce)
        if not hmac.compare_digest(expected, ready.proof):
            raise StateServerUnavailable(
                f"The state server at {address} could not prove it knows the shared "
                "secret (STATEMODES_STATE_SECRET differs from the server's).",
                setting=SECRET_SETTING,
            )
