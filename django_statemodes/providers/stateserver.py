"""The StateServer provider: sessions in a separate state server process (ASP.NET StateServer).

``SESSION_ENGINE = "django_statemodes.backends.stateserver"`` with the server's address in
``STATEMODES_STATE_CONNECTION``. Several ``;``-separated servers partition sessions by rendezvous
hashing (each key always goes to the same server, and adding a server moves only the keys it
takes over); ``STATEMODES_PARTITION_RESOLVER`` names a custom resolver instead (ASP.NET
``partitionResolverType``). Waiting for a lock uses the server's WAIT request: the waiter is
woken the moment the holder releases, never by polling.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from django_statemodes.conf import conf
from django_statemodes.providers.base import ExpiredItem, SessionStateProvider, StateItem
from django_statemodes.stateserver.addresses import Address, parse_address, parse_connection
from django_statemodes.stateserver.client import AsyncStateServerClient, StateServerClient

__all__ = ["PartitionResolver", "RendezvousResolver", "StateServerProvider"]


class PartitionResolver(Protocol):
    """What ``STATEMODES_PARTITION_RESOLVER`` names (ASP.NET ``IPartitionResolver``).

    The class is built with no arguments. ``resolve_partition`` returns the address of the
    server for a session key, in ``STATEMODES_STATE_CONNECTION`` syntax (``tcpip=host:port``).
    ``partitions`` lists every address, so ``purge_sessions`` can reach them all.
    """

    def resolve_partition(self, session_key: str) -> str: ...

    def partitions(self) -> list[str]: ...


def _storable(session_key: Any) -> bool:
    # Keys come from cookies: anything the wire cannot carry is simply a missing session.
    return isinstance(session_key, str) and session_key.isascii() and 0 < len(session_key) <= 255


def _score(address: Address, session_key: str) -> int:
    digest = hashlib.blake2b(f"{address}|{session_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class RendezvousResolver:
    """Spread keys over servers by rendezvous (highest random weight) hashing."""

    def __init__(self, connection: str) -> None:
        self.addresses = parse_connection(connection)

    def resolve(self, session_key: str) -> Address:
        if len(self.addresses) == 1:
            return self.addresses[0]
        return max(self.addresses, key=lambda address: _score(address, session_key))

    def all(self) -> list[Address]:
        return list(self.addresses)


class _CustomResolver:
    """Adapt a user's ``PartitionResolver`` to the ``resolve``/``all`` shape used below."""

    def __init__(self, path: str) -> None:
        try:
            self.resolver: PartitionResolver = import_string(path)()
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"STATEMODES_PARTITION_RESOLVER {path!r} cannot be imported: {exc}"
            ) from exc
        self._parsed: dict[str, Address] = {}

    def _parse(self, text: str) -> Address:
        address = self._parsed.get(text)
        if address is None:
            address = self._parsed[text] = parse_address(text)
        return address

    def resolve(self, session_key: str) -> Address:
        return self._parse(self.resolver.resolve_partition(session_key))

    def all(self) -> list[Address]:
        return [self._parse(text) for text in self.resolver.partitions()]


class StateServerProvider(SessionStateProvider):
    """A provider over one or several state servers.

    Options default to the settings: ``connection`` (STATEMODES_STATE_CONNECTION), ``timeout``
    (STATEMODES_STATE_NETWORK_TIMEOUT), ``application`` (STATEMODES_APPLICATION_NAME), ``secret``
    (STATEMODES_STATE_SECRET), ``resolver`` (STATEMODES_PARTITION_RESOLVER). The blocking
    clients' pools follow STATEMODES_MAX_CONNECTIONS, STATEMODES_CONNECTION_WAIT and
    STATEMODES_CONNECTION_IDLE_TIMEOUT; the asyncio client pipelines one connection per loop.
    """

    settings: ClassVar[frozenset[str]] = frozenset(
        {
            "STATEMODES_STATE_CONNECTION",
            "STATEMODES_STATE_NETWORK_TIMEOUT",
            "STATEMODES_APPLICATION_NAME",
            "STATEMODES_STATE_SECRET",
            "STATEMODES_PARTITION_RESOLVER",
            "STATEMODES_MAX_CONNECTIONS",
            "STATEMODES_CONNECTION_WAIT",
            "STATEMODES_CONNECTION_IDLE_TIMEOUT",
        }
    )

    def __init__(
        self,
        *,
        connection: str | None = None,
        timeout: float | None = None,
        application: str | None = None,
        secret: str | None = None,
        resolver: str | None = None,
    ) -> None:
        super().__init__()
        self.timeout = timeout if timeout is not None else conf.STATEMODES_STATE_NETWORK_TIMEOUT
        self.application = application or conf.STATEMODES_APPLICATION_NAME
        self.secret = secret if secret is not None else conf.STATEMODES_STATE_SECRET
        resolver = resolver if resolver is not None else conf.STATEMODES_PARTITION_RESOLVER
        self.resolver: RendezvousResolver | _CustomResolver
        if resolver:
            self.resolver = _CustomResolver(resolver)
        else:
            self.resolver = RendezvousResolver(connection or conf.STATEMODES_STATE_CONNECTION)
        self._clients: dict[Address, StateServerClient] = {}
        self._aclients: dict[Address, AsyncStateServerClient] = {}
        self._mutex = threading.Lock()

    def _options(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "application": self.application, "secret": self.secret}

    def client(self, session_key: str) -> StateServerClient:
        """Return the blocking client of the server that holds ``session_key``."""
        return self._client_at(self.resolver.resolve(session_key))

    def _client_at(self, address: Address) -> StateServerClient:
        client = self._clients.get(address)
        if client is None:
            with self._mutex:
                client = self._clients.get(address)
                if client is None:
                    # A bounded pool per server: the process holds at most
                    # STATEMODES_MAX_CONNECTIONS blocking connections to each (a WAIT holds
                    # one for its wait); past STATEMODES_CONNECTION_WAIT, a 503.
                    client = self._clients[address] = StateServerClient(
                        address,
                        **self._options(),
                        pool_size=conf.STATEMODES_MAX_CONNECTIONS,
                        pool_wait=conf.STATEMODES_CONNECTION_WAIT,
                        idle_timeout=conf.STATEMODES_CONNECTION_IDLE_TIMEOUT,
                    )
        return client

    def aclient(self, session_key: str) -> AsyncStateServerClient:
        address = self.resolver.resolve(session_key)
        client = self._aclients.get(address)
        if client is None:
            with self._mutex:
                client = self._aclients.setdefault(
                    address, AsyncStateServerClient(address, **self._options())
                )
        return client

    # The contract: one round trip each.

    def get(self, session_key: str) -> StateItem | None:
        if not _storable(session_key):
            return None
        return self.client(session_key).get(session_key)

    def get_exclusive(self, session_key: str) -> StateItem | None:
        if not _storable(session_key):
            return None
        return self.client(session_key).get_exclusive(session_key)

    def set_and_release(
        self,
        session_key: str,
        data: Any,
        *,
        lock_id: int | None,
        timeout: int,
        new_item: bool = False,
        keep_lock: bool = False,
    ) -> bool:
        if not _storable(session_key):
            return False
        return self.client(session_key).set_and_release(
            session_key,
            data,
            lock_id=lock_id,
            timeout=timeout,
            new_item=new_item,
            release=not keep_lock,
        )

    def release(self, session_key: str, lock_id: int) -> None:
        self.client(session_key).release(session_key, lock_id)

    def remove(self, session_key: str, lock_id: int | None = None) -> bool:
        if not _storable(session_key):
            return False
        return self.client(session_key).remove(session_key, lock_id)

    def create_uninitialized(self, session_key: str, timeout: int) -> bool:
        if not _storable(session_key):
            return False
        return self.client(session_key).create_uninitialized(session_key, timeout)

    def purge_expired(
        self,
        *,
        on_expired: Callable[[ExpiredItem], None] | None = None,
        dry_run: bool = False,
        batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        total = 0
        for address in self.resolver.all():  # each server purges in one step: one batch each
            total += self._client_at(address).purge_expired(on_expired=on_expired, dry_run=dry_run)
            if on_batch is not None:
                on_batch(total)
        return total

    def wait_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        # The server answers WAIT when the lock ends: an immediate hand-off, no polling. The
        # wait holds one pooled connection; the core bounds a session's waiting threads.
        self.client(session_key).wait(session_key, lock_id, timeout)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Return each server's statistics, by address."""
        return {str(a): self._client_at(a).stats() for a in self.resolver.all()}

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self._aclients.clear()

    # Async twins over the asyncio client.

    async def aget(self, session_key: str) -> StateItem | None:
        if not _storable(session_key):
            return None
        return await self.aclient(session_key).get(session_key)

    async def aget_exclusive(self, session_key: str) -> StateItem | None:
        if not _storable(session_key):
            return None
        return await self.aclient(session_key).get_exclusive(session_key)

    async def aset_and_release(
        self,
        session_key: str,
        data: Any,
        *,
        lock_id: int | None,
        timeout: int,
        new_item: bool = False,
        keep_lock: bool = False,
    ) -> bool:
        if not _storable(session_key):
            return False
        return await self.aclient(session_key).set_and_release(
            session_key,
            data,
            lock_id=lock_id,
            timeout=timeout,
            new_item=new_item,
            release=not keep_lock,
        )

    async def arelease(self, session_key: str, lock_id: int) -> None:
        await self.aclient(session_key).release(session_key, lock_id)

    async def aremove(self, session_key: str, lock_id: int | None = None) -> bool:
        if not _storable(session_key):
            return False
        return await self.aclient(session_key).remove(session_key, lock_id)

    async def await_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        await self.aclient(session_key).wait(session_key, lock_id, timeout)
