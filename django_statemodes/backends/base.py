"""The session core: Django's ``SessionBase`` plus ASP.NET's lock lifecycle and access modes.

Engines are thin: each one only says which provider (``providers/base.py``) it binds to. The core
owns everything else, so every mode behaves the same:

- ReadWrite (``access="ReadWrite"``, what the middleware passes by default): the first touch
  loads the session and takes its exclusive lock in one store call; waiting requests are woken
  by the provider; a lock older than ``STATEMODES_LOCK_TIMEOUT`` is broken and its holder's later
  write refused; ``finish()`` saves and releases in one call.
- ReadOnly: load without locking and without waiting; any change raises ``SessionStateReadOnly``.
- Disabled: any touch raises ``SessionStateDisabled``.
- Direct (``access=None``, a store built by code outside a request, as Django's test client
  does): Django's own semantics, no lock, last write wins.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.sessions.backends.base import (
    VALID_KEY_CHARS,
    CreateError,
    SessionBase,
    UpdateError,
)
from django.core.signals import setting_changed
from django.core.signing import JSONSerializer
from django.dispatch import receiver
from django.utils import timezone
from django.utils.crypto import get_random_string
from django.utils.functional import cached_property
from django.utils.module_loading import import_string

from django_statemodes.conf import conf
from django_statemodes.exceptions import (
    SessionLockLost,
    SessionQueueFull,
    SessionStateDisabled,
    SessionStateReadOnly,
    SessionTooLarge,
    SessionValueError,
)
from django_statemodes.modes import DISABLED, READ_ONLY, READ_WRITE, SessionStateMode
from django_statemodes.providers.base import ExpiredItem, SessionStateProvider, StateItem
from django_statemodes.signals import session_end, session_start

logger = logging.getLogger("django_statemodes")

# Payload marker bytes: the first byte says how the rest is encoded, so STATEMODES_COMPRESSION
# can be switched on or off without breaking sessions already stored (ASP.NET cannot).
RAW = b"\x00"
ZLIB = b"\x01"
# Below this many bytes compression costs more than it saves.
COMPRESS_MIN_LENGTH = 256

# Django's default SESSION_SERIALIZER is json.dumps(obj, separators=(",", ":")).encode("latin-1")
# and json.loads(data.decode("latin-1")), building a JSONEncoder on every call. These pre-built
# coders produce the same bytes and data; they are used only while that serializer is configured
# (under any name: django.contrib.sessions.serializers re-exports django.core.signing's).
_is_django_json: dict[str, bool] = {}
_json_encode = json.JSONEncoder(separators=(",", ":")).encode
_json_decoder = json.JSONDecoder()
_json_scan = _json_decoder.scan_once  # type: ignore[attr-defined]
# Values whose JSON form exists always and is at most this many bytes per character of text
# (ensure_ascii writes a character outside the BMP as two 6-byte escapes).
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})
_JSON_BYTES_PER_CHAR = 12


@dataclass
class LockStats:
    """Per-process lock counters, shown by the demo's status page.

    Plain increments without a mutex: ``acquired`` is bumped on every request, and a count
    rarely lost between two threads does not matter for statistics.
    """

    acquired: int = 0
    waited: int = 0
    wait_seconds: float = 0.0
    stolen: int = 0
    refused_writes: int = 0
    queue_full: int = 0

    def as_dict(self) -> dict[str, float]:
        return dict(vars(self))


lock_stats = LockStats()

# Requests of this process waiting per session key (ASP.NET counts per app domain too).
_waiting: dict[str, int] = {}
_waiting_mutex = threading.Lock()

_providers: dict[type[StateModeSessionBase], SessionStateProvider] = {}
_providers_mutex = threading.Lock()


# Settings the core reads on every use: changing them must not rebuild (and so empty) a
# provider that keeps sessions in the process, such as a Custom-mode provider over a dict.
_CORE_SETTINGS = frozenset(
    {
        "STATEMODES_LOCK_TIMEOUT",
        "STATEMODES_LOCK_QUEUE_LIMIT",
        "STATEMODES_DEFAULT_ACCESS",
        "STATEMODES_COMPRESSION",
        "STATEMODES_MAX_SESSION_SIZE",
        "STATEMODES_REGENERATE_EXPIRED_SESSION_ID",
    }
)


@receiver(setting_changed)
def _reset_providers(*, setting: str, **kwargs: Any) -> None:
    # Providers are built from settings once; override_settings in tests needs a rebuild.
    if setting in _CORE_SETTINGS:
        return
    if setting.startswith("STATEMODES_") or setting in {"CACHES", "DATABASES"}:
        with _providers_mutex:
            providers = list(_providers.values())
            _providers.clear()
        for provider in providers:
            provider.close()


@contextmanager
def _queued(session_key: str) -> Iterator[None]:
    limit = conf.STATEMODES_LOCK_QUEUE_LIMIT
    with _waiting_mutex:
        count = _waiting.get(session_key, 0)
        if count >= limit:
            lock_stats.queue_full += 1
            raise SessionQueueFull(
                f"The request queue limit of the session is exceeded ({limit} requests are "
                f"already waiting; STATEMODES_LOCK_QUEUE_LIMIT)."
            )
        _waiting[session_key] = count + 1
    try:
        yield
    finally:
        with _waiting_mutex:
            left = _waiting[session_key] - 1
            if left:
                _waiting[session_key] = left
            else:
                del _waiting[session_key]


class StateModeSessionBase(SessionBase):
    """Base class for the session engines of django-statemodes."""

    _session_cache: dict[str, Any]  # set by SessionBase._get_session() on first access

    def __init__(self, session_key: str | None = None, access: SessionStateMode | None = None):
        # SessionBase.__init__ without its import_string(SESSION_SERIALIZER) on every request:
        # ``serializer`` is a cached property, built only where something is serialized.
        self._session_key = session_key
        self.accessed = False
        self._modified = False
        self.access: SessionStateMode | None = access
        #: The view being served, named in ReadOnly and Disabled errors (set by the middleware).
        self.view_name: str | None = None
        provider = _providers.get(type(self)) or self.get_provider()
        self._provider = provider
        self._stores_objects = provider.stores_objects
        self._lock_id: int | None = None
        self._locked_key: str | None = None
        self._released = False
        self._cycling = False
        # A placeholder item (create_uninitialized) read for the first time: ASP.NET's
        # InitializeItem. Its first save is the session's start.
        self._initializing = False

    @cached_property
    def serializer(self) -> Any:
        return import_string(settings.SESSION_SERIALIZER)

    # Engines implement this one method.

    @classmethod
    def create_provider(cls) -> SessionStateProvider:
        """Return the provider this engine binds the core to."""
        raise NotImplementedError("engines must provide a create_provider() classmethod")

    @classmethod
    def get_provider(cls) -> SessionStateProvider:
        """Return the engine's provider, built once per process and settings."""
        try:
            return _providers[cls]
        except KeyError:
            with _providers_mutex:
                if cls not in _providers:
                    _providers[cls] = cls.create_provider()
                return _providers[cls]

    # Access modes.

    @property
    def modified(self) -> bool:
        return self._modified

    @modified.setter
    def modified(self, value: bool) -> None:
        # Every mutator of SessionBase sets modified = True: one choke point for ReadOnly.
        if value:
            self._check_writable()
        self._modified = value

    def _where(self) -> str:
        return f" (view {self.view_name})" if self.view_name else ""

    def _check_writable(self) -> None:
        if self.access == READ_ONLY:
            raise SessionStateReadOnly(
                f"The session is read-only in this request{self._where()}: the view is marked "
                "ReadOnly (@session_readonly or session_state = 'ReadOnly'). Mark it ReadWrite "
                "to change the session."
            )
        if self._released:
            raise SessionStateReadOnly(
                f"The session was released early with request.session.release(){self._where()}"
                " and can no longer be changed in this request."
            )

    def _check_enabled(self) -> None:
        if self.access == DISABLED:
            raise SessionStateDisabled(
                f"Session state is disabled for this request{self._where()}. Remove "
                "@session_disabled (or session_state = 'Disabled') from the view, or set "
                "STATEMODES_DEFAULT_ACCESS to 'ReadWrite' or 'ReadOnly', to use request.session."
            )

    def _get_session(self, no_load: bool = False) -> dict[str, Any]:
        if self.access == DISABLED:
            self._check_enabled()
        # SessionBase._get_session(), inlined: every item access comes through here.
        self.accessed = True
        try:
            return self._session_cache
        except AttributeError:
            if self._session_key is None or no_load:
                self._session_cache = {}
            else:
                self._session_cache = self.load()
        return self._session_cache

    async def _aget_session(self, no_load: bool = False) -> dict[str, Any]:
        self._check_enabled()
        return await super()._aget_session(no_load)  # type: ignore[misc,no-any-return]

    _session = property(_get_session)

    # Values: checked where they are stored, not as a mystery at response time.

    def __setitem__(self, key: str, value: Any) -> None:
        if self.access == READ_ONLY or self._released:
            self._check_writable()
        if not self._stores_objects:
            self._check_value(key, value)
        self._get_session()[key] = value
        self._modified = True  # SessionBase sets ``modified``; the property's check ran above

    async def aset(self, key: str, value: Any) -> None:
        self._check_writable()
        if not self._stores_objects:
            self._check_value(key, value)
        await super().aset(key, value)

    def update(self, dict_: Any) -> None:  # type: ignore[override]
        self._check_writable()
        if not self._stores_objects:
            for key, value in dict(dict_).items():
                self._check_value(key, value)
        super().update(dict_)

    async def aupdate(self, dict_: Any) -> None:
        self._check_writable()
        if not self._stores_objects:
            for key, value in dict(dict_).items():
                self._check_value(key, value)
        await super().aupdate(dict_)

    def _check_value(self, key: str, value: Any) -> None:
        if self._plain_fits(key, value):
            return  # JSON always takes it, within the size limit: nothing to serialize
        try:
            size = len(self._dumps({key: value}))
        except Exception as exc:
            raise SessionValueError(
                f"The session value for {key!r} cannot be stored: {type(value).__name__} is not "
                f"serializable by {settings.SESSION_SERIALIZER} ({exc}). Store plain data "
                "(str, int, float, bool, None, list, dict) or change SESSION_SERIALIZER."
            ) from exc
        limit = conf.STATEMODES_MAX_SESSION_SIZE
        if size > limit:
            raise SessionTooLarge(
                f"The session value for {key!r} is {size} bytes serialized, more than "
                f"STATEMODES_MAX_SESSION_SIZE ({limit} bytes)."
            )

    def _plain_fits(self, key: Any, value: Any) -> bool:
        """Say whether Django's JSON serializer surely stores ``{key: value}`` within the limit."""
        kind = type(value)
        if type(key) is not str or kind not in _PLAIN_TYPES or not self._default_json:
            return False
        if kind is int and not -(1 << 63) <= value < 1 << 64:
            return False  # huge ints can be over sys.get_int_max_str_digits()
        length = len(key) + (len(value) if kind is str else 32)
        return length * _JSON_BYTES_PER_CHAR + 8 <= conf.STATEMODES_MAX_SESSION_SIZE

    @cached_property
    def _default_json(self) -> bool:
        # The fast coders stand in for Django's JSONSerializer only where it is the serializer:
        # the setting names it and no subclass overrides ``serializer``.
        path = settings.SESSION_SERIALIZER
        default = _is_django_json.get(path)
        if default is None:
            default = _is_django_json[path] = import_string(path) is JSONSerializer
        return default and type(self).serializer is StateModeSessionBase.__dict__["serializer"]

    def _dumps(self, data: Any) -> bytes:
        if self._default_json:
            return _json_encode(data).encode("latin-1")
        return self.serializer().dumps(data)  # type: ignore[no-any-return]

    def _loads(self, data: bytes) -> Any:
        if self._default_json:
            return _json_loads(data.decode("latin-1"))
        return self.serializer().loads(data)

    # Payloads.

    def _to_payload(self, data: dict[str, Any]) -> Any:
        if self._stores_objects:
            return dict(data)  # live objects; a copy, so an unsaved request changes nothing
        try:
            raw = self._dumps(data)
        except Exception:
            for key, value in data.items():  # name the offending key
                self._check_value(key, value)
            raise
        if conf.STATEMODES_COMPRESSION and len(raw) >= COMPRESS_MIN_LENGTH:
            payload = ZLIB + zlib.compress(raw)
        else:
            payload = RAW + raw
        limit = conf.STATEMODES_MAX_SESSION_SIZE
        if len(payload) > limit:
            raise SessionTooLarge(
                f"The session is {len(payload)} bytes serialized, more than "
                f"STATEMODES_MAX_SESSION_SIZE ({limit} bytes). Keys: {', '.join(map(repr, data))}."
            )
        return payload

    def _from_payload(self, payload: Any) -> dict[str, Any]:
        if payload is None:
            return {}
        if self._stores_objects:
            return dict(payload)
        try:
            marker, body = payload[:1], payload[1:]
            if marker == ZLIB:
                body = zlib.decompress(body)
            elif marker != RAW:
                raise ValueError(f"unknown payload marker {marker!r}")
            data = self._loads(body)
            if not isinstance(data, dict):
                raise ValueError("payload is not a dict")
            return data
        except Exception as exc:
            # Django's decode(): corrupt data is logged to the security logger, never served.
            security = logging.getLogger("django.security.SuspiciousSession")
            security.warning("Session data corrupted: %s", exc)
            return {}

    # Loading.

    def _get_new_session_key(self) -> str:
        # No exists() round trip per new key: the insert is atomic and refuses a collision
        # (CreateError), and create() then simply tries another key.
        return get_random_string(32, VALID_KEY_CHARS)

    def _wants_lock(self) -> bool:
        return self.access == READ_WRITE and not self._released

    def _acquire(self, session_key: str) -> StateItem | None:
        provider = self._provider
        item = provider.get_exclusive(session_key)
        if item is None or not item.locked:
            return item
        started = time.monotonic()
        lock_timeout = conf.STATEMODES_LOCK_TIMEOUT
        with _queued(session_key):
            while item is not None and item.locked:
                if item.lock_age >= lock_timeout:
                    self._steal(session_key, item)
                    provider.release(session_key, item.lock_id)
                else:
                    provider.wait_for_release(
                        session_key, item.lock_id, lock_timeout - item.lock_age
                    )
                item = provider.get_exclusive(session_key)
        lock_stats.waited += 1
        lock_stats.wait_seconds += time.monotonic() - started
        return item

    async def _aacquire(self, session_key: str) -> StateItem | None:
        provider = self._provider
        item = await provider.aget_exclusive(session_key)
        if item is None or not item.locked:
            return item
        started = time.monotonic()
        lock_timeout = conf.STATEMODES_LOCK_TIMEOUT
        with _queued(session_key):
            while item is not None and item.locked:
                if item.lock_age >= lock_timeout:
                    self._steal(session_key, item)
                    await provider.arelease(session_key, item.lock_id)
                else:
                    await provider.await_for_release(
                        session_key, item.lock_id, lock_timeout - item.lock_age
                    )
                item = await provider.aget_exclusive(session_key)
        lock_stats.waited += 1
        lock_stats.wait_seconds += time.monotonic() - started
        return item

    def _steal(self, session_key: str, item: StateItem) -> None:
        # ASP.NET breaks a lock once lockAge >= executionTimeout, by releasing it with the
        # holder's lock cookie; the holder's later write then no longer matches and is refused.
        lock_stats.stolen += 1
        logger.warning(
            "Breaking the lock of session %s...: held for %.1f s, longer than "
            "STATEMODES_LOCK_TIMEOUT (%s s). The holder's write will be refused.",
            session_key[:8],
            item.lock_age,
            conf.STATEMODES_LOCK_TIMEOUT,
        )

    def _apply(self, session_key: str, item: StateItem | None) -> dict[str, Any]:
        if item is None:
            # Never create a record on load (CVE-2015-5143); a fresh key is issued on save.
            self._session_key = None
            return {}
        if self.access == READ_WRITE and not self._released:  # _wants_lock(), inlined
            self._lock_id, self._locked_key = item.lock_id, session_key
            lock_stats.acquired += 1
        if item.initialize:
            self._initializing = True
        data = self._from_payload(item.data)
        if "_session_expiry" in data and _past(data["_session_expiry"]):
            # set_expiry(datetime) is absolute: the store slides, so the date is checked here.
            self._end(session_key, data, "expired")
            self._provider.remove(session_key, self._lock_id)
            self._lock_id = self._locked_key = None
            self._session_key = None
            return {}
        return data

    def load(self) -> dict[str, Any]:
        key = self._session_key
        if key is None:
            return {}
        if self.access == READ_WRITE and not self._released:  # _wants_lock(), inlined
            item = self._acquire(key)
        else:
            item = self._provider.get(key)
        return self._apply(key, item)

    async def aload(self) -> dict[str, Any]:
        key = self._session_key
        if key is None:
            return {}
        if self._wants_lock():
            item = await self._aacquire(key)
        else:
            item = await self._provider.aget(key)
        return self._apply(key, item)

    def exists(self, session_key: str) -> bool:
        return self._provider.get(session_key) is not None

    # Saving.

    def create(self) -> None:
        while True:
            self._session_key = self._get_new_session_key()
            try:
                self.save(must_create=True)
            except CreateError:
                continue  # key collision: try another
            self.modified = True
            return

    def _write(self, must_create: bool) -> tuple[str, Any, int]:
        """Return the key, payload and timeout of a save (the CPU part, shared by sync/async)."""
        if self.access == READ_ONLY or self._released:
            self._check_writable()
        key = self._session_key
        assert key is not None
        data = self._get_session(no_load=must_create)
        payload = dict(data) if self._stores_objects else self._to_payload(data)
        if data.get("_session_expiry"):
            timeout = max(0, self.get_expiry_age())
        else:
            # What get_expiry_age() returns without a custom expiry, minus its timezone.now().
            timeout = max(0, self.get_session_cookie_age())
        return key, payload, timeout

    def _written(self, key: str, ok: bool, must_create: bool, release: bool) -> None:
        if must_create:
            if not ok:
                raise CreateError
            if not self._cycling:
                session_start.send(sender=type(self), session_key=key, session=self)
            return
        if not ok:
            if self._lock_id is not None:
                lock_stats.refused_writes += 1
                logger.warning(
                    "Refused the write of session %s...: its lock was broken after "
                    "STATEMODES_LOCK_TIMEOUT and another request holds it now.",
                    key[:8],
                )
                self._lock_id = self._locked_key = None
                raise SessionLockLost(
                    "The session's lock was broken after STATEMODES_LOCK_TIMEOUT; "
                    "this request's changes were not saved."
                )
            raise UpdateError
        if self._initializing:
            self._initializing = False
            session_start.send(sender=type(self), session_key=key, session=self)
        if release:
            self._lock_id = self._locked_key = None

    def save(self, must_create: bool = False) -> None:
        self._save(must_create=must_create, release=False)

    def _save(self, *, must_create: bool, release: bool) -> None:
        if self._session_key is None:
            return self.create()
        key, payload, timeout = self._write(must_create)
        ok = self._provider.set_and_release(
            key,
            payload,
            lock_id=None if must_create else self._lock_id,
            timeout=timeout,
            new_item=must_create,
            release=release,
        )
        if ok and not (must_create or self._initializing):  # the common case, kept short
            if release:
                self._lock_id = self._locked_key = None
            return
        self._written(key, ok, must_create, release)

    async def _asave(self, *, release: bool) -> None:
        if self._session_key is None:
            return await self.acreate()
        key, payload, timeout = self._write(False)
        ok = await self._provider.aset_and_release(
            key, payload, lock_id=self._lock_id, timeout=timeout, release=release
        )
        self._written(key, ok, False, release)

    # The request's end (called by SessionStateMiddleware).

    def finish(self, save: bool) -> None:
        """Save if ``save`` and release the lock, in one store call; idempotent.

        A ReadOnly session is never saved: nothing in it can have changed.
        """
        if self._released:
            return
        try:
            if save and self.access != READ_ONLY:
                self._save(must_create=False, release=True)
            elif self._lock_id is not None and self._locked_key is not None:
                self._provider.release(self._locked_key, self._lock_id)
        finally:
            self._lock_id = self._locked_key = None
            self._released = True

    async def afinish(self, save: bool) -> None:
        """Async ``finish()``."""
        if self._released:
            return
        try:
            if save and self.access != READ_ONLY:
                await self._asave(release=True)
            elif self._lock_id is not None and self._locked_key is not None:
                await self._provider.arelease(self._locked_key, self._lock_id)
        finally:
            self._lock_id = self._locked_key = None
            self._released = True

    def release(self) -> None:
        """Save (if changed) and unlock now; the session is read-only for the rest of the request.

        For long views: other requests of the session no longer wait for this one.
        """
        save = (self._modified or settings.SESSION_SAVE_EVERY_REQUEST) and not self.is_empty()
        self.finish(save)

    async def arelease(self) -> None:
        save = (self._modified or settings.SESSION_SAVE_EVERY_REQUEST) and not self.is_empty()
        await self.afinish(save)

    def refresh(self) -> None:
        """Load the session if it is not loaded yet (for ``SESSION_SAVE_EVERY_REQUEST``).

        In a ReadOnly request, where nothing is saved, the read slides the stored expiry (as
        ASP.NET's ResetItemTimeout does for pages that do not write) and drops an unknown key,
        so the cookie the middleware re-sends matches the record.
        """
        self._get_session()

    async def arefresh(self) -> None:
        await self._aget_session()

    @property
    def released(self) -> bool:
        return self._released

    # Ending.

    def delete(self, session_key: str | None = None) -> None:
        if session_key is None:
            if self._session_key is None:
                return
            session_key = self._session_key
        mine = session_key == self._locked_key
        self._provider.remove(session_key, self._lock_id if mine else None)
        if mine:
            self._lock_id = self._locked_key = None

    def flush(self) -> None:
        self._check_enabled()
        self._check_writable()
        if self._session_key is not None and session_end.has_listeners():
            self._end(self._session_key, dict(self._get_session()), "abandoned")
        super().flush()

    def cycle_key(self) -> None:
        self._cycling = True
        try:
            super().cycle_key()
        finally:
            self._cycling = False

    def _end(self, session_key: str, data: dict[str, Any] | None, reason: str) -> None:
        session_end.send(sender=type(self), session_key=session_key, data=data, reason=reason)

    @classmethod
    def clear_expired(cls) -> None:
        cls.purge()

    @classmethod
    def purge(
        cls,
        *,
        dry_run: bool = False,
        batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Remove expired sessions, send ``session_end`` for each, return how many.

        ``on_batch`` is called with the running total after each batch, where the provider
        purges in batches and accepts an ``on_batch`` keyword (SQL mode); for progress displays.
        """
        on_expired = cls._expired if session_end.has_listeners() else None
        provider = cls.get_provider()
        extra: dict[str, Any] = {}
        if on_batch is not None and _accepts(provider.purge_expired, "on_batch"):
            extra["on_batch"] = on_batch
        return provider.purge_expired(
            on_expired=on_expired, dry_run=dry_run, batch_size=batch_size, **extra
        )

    @classmethod
    def _expired(cls, item: ExpiredItem, reason: str = "expired") -> None:
        data = None if item.data is None else cls()._from_payload(item.data)
        session_end.send(sender=cls, session_key=item.session_key, data=data, reason=reason)


def _json_loads(text: str) -> Any:
    """``json.loads(text)`` for a payload the core wrote: one scan, no whitespace regex."""
    try:
        data, end = _json_scan(text, 0)
    except StopIteration:
        end = -1
    if end != len(text):  # leading or trailing text: json.loads decides (and names the error)
        return _json_decoder.decode(text)
    return data


def _accepts(function: Callable[..., Any], name: str) -> bool:
    """Say whether ``function`` takes the keyword argument ``name`` (an optional contract hook)."""
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _past(expiry: Any) -> bool:
    if not isinstance(expiry, str):
        return False
    try:
        when = datetime.fromisoformat(expiry)
    except ValueError:
        return False
    now = timezone.now() if timezone.is_aware(when) else datetime.now()
    return when <= now
