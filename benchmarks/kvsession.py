"""A Django session engine on the key-value floor server: what Django's own session framework
costs over two round trips, with nothing of ours.

``load`` is one GET, ``save`` one SET of the session encoded with ``SESSION_SERIALIZER`` (no
lock, no expiry: a floor, not a store to deploy). Under Django's ``SessionMiddleware`` it is the
least a Django session engine outside the process can do per request, so its HTTP rate over the
no-session floor's bounds what any such engine, ours or Django's, can reach on the machine.
"""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.backends.base import VALID_KEY_CHARS, CreateError, SessionBase
from django.utils.crypto import get_random_string

from benchmarks import kvserver


class SessionStore(SessionBase):
    def load(self) -> dict[str, Any]:
        raw = kvserver.client().get(self.session_key.encode()) if self.session_key else None
        if raw is None:
            self._session_key = None
            return {}
        data: dict[str, Any] = self.serializer().loads(raw)
        return data

    def exists(self, session_key: str) -> bool:
        return kvserver.client().get(session_key.encode()) is not None

    def create(self) -> None:
        while True:
            self._session_key = get_random_string(32, VALID_KEY_CHARS)
            try:
                self.save(must_create=True)
            except CreateError:
                continue
            self.modified = True
            return

    def save(self, must_create: bool = False) -> None:
        if self.session_key is None:
            return self.create()
        if must_create and self.exists(self.session_key):
            raise CreateError
        # A new session is what the view put in it; Django's own engines do not load it either.
        data = getattr(self, "_session_cache", {}) if must_create else dict(self.items())
        kvserver.client().set(self.session_key.encode(), self.serializer().dumps(data))

    def delete(self, session_key: str | None = None) -> None:
        key = session_key or self.session_key
        if key is not None:
            kvserver.client().delete(key.encode())

    @classmethod
    def clear_expired(cls) -> None:
        """Nothing expires in the floor."""
