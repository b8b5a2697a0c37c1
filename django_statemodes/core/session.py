"""The session class: Django's ``SessionBase`` plus ASP.NET's lock lifecycle and access modes.

Engines are thin: each one only names its provider (``providers/``). This class owns the rest,
so every mode behaves the same:

- ReadWrite (``access="ReadWrite"``, what the middleware passes by default): the first touch
  loads the session and takes its exclusive lock in one store call (``core.locking``); a lock
  older than ``STATEMODES_LOCK_TIMEOUT`` is broken and its holder's later write refused;
  ``finish()`` saves and releases in one call.
- ReadOnly: load without locking and without waiting; any change raises ``SessionStateReadOnly``.
- Disabled: any touch raises ``SessionStateDisabled``.
- Direct (``access=None``, a store built by code outside a request, as Django's test client
  does): Django's own semantics, no lock, last write wins.

Every operation that reaches the store is one generator of provider calls (``core.calls``),
run by the sync method and by its ``a``-prefixed twin alike. Every ``a``-method Django's
``SessionBase`` defines is native here: none runs the blocking method in a thread. The blocking
methods refuse to reach the store from a running event loop (``SessionStateSyncInAsync``, naming
the twin to await); a session already loaded is read without the store, so without error.
"""

from __future__ import annotations

from asyncio.events import _get_running_loop
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.base import (
    VALID_KEY_CHARS,
    CreateError,
    SessionBase,
    UpdateError,
)
from django.utils import timezone
from django.utils.crypto import get_random_string
from django.utils.functional import cached_property
from django.utils.module_loading import import_string

from django_statemodes.conf import conf
from django_statemodes.exceptions import (
    SessionLockLost,
    SessionStateDisabled,
    SessionStateReadOnly,
)
from django_statemodes.modes import DISABLED, READ_ONLY, READ_WRITE, SessionStateMode
from django_statemodes.providers.base import ExpiredItem, SessionStateProvider, StateItem
from django_statemodes.signals import session_end, session_start

from . import adoption, locking, registry, users
from .calls import NO_KEYWORDS, Op, Steps, arun, run, steps_of
from .cancellation import refuse_sync
from .codec import OBJECTS, UNENCODABLE, Codec, codec_for, codec_named

__all__ = ["StateModeSessionBase"]


class StateModeSessionBase(SessionBase):
    """Base class for the session engines of django-statemodes."""

    #: Settings the engine reads when it builds its provider: changing one rebuilds it.
    provider_settings: ClassVar[frozenset[str]] = frozenset()

    _session_cache: dict[str, Any]  # set on first access, as SessionBase does
    #: release() (the view's own early release) rather than the middleware's finish() ended
    #: the request's hold on the session; only error messages read it. A class default, so
    #: that __init__, run on every request, sets nothing more.
    _released_by_view: bool = False
    #: This load already looked in the engine the site switched from (``_adopt``): a class
    #: default, for the same reason.
    _adopting: bool = False
    _storing: tuple[str, dict[str, Any]]  # the key and keywords of the store call in flight
    #: Gives the mode when it is first needed, if the middleware could not know it yet (see
    #: ``access``); None once the mode is known. A class default: most requests never set it.
    _mode_source: Callable[[], SessionStateMode] | None = None
    #: The user to bind the session to once it is stored, with the client's IP address and
    #: User-Agent (``bind_to_user``; the index of sessions by user). A class default: set only
    #: at a sign-in.
    _bind: tuple[str, str | None, str | None] | None = None

    def __init__(
        self,
        session_key: str | None = None,
        access: SessionStateMode | None = None,
        *,
        mode_source: Callable[[], SessionStateMode] | None = None,
    ):
        # SessionBase.__init__ without its import_string(SESSION_SERIALIZER) on every request:
        # the codec is looked up only where something is serialized.
        self._session_key = session_key
        self.accessed = False
        self._modified = False
        self._access: SessionStateMode | None = access
        if mode_source is not None:
            self._mode_source = mode_source
        #: The view being served, named in ReadOnly and Disabled errors (set by the middleware).
        self.view_name: str | None = None
        provider = registry.providers.get(type(self)) or registry.provider_for(type(self))
        self._provider = provider
        self._codec: Codec | None = OBJECTS if provider.stores_objects else None
        self._lock_id: int | None = None
        self._locked_key: str | None = None
        self._released = False
        self._cycling = False
        # A placeholder item (create_uninitialized) read for the first time: ASP.NET's
        # InitializeItem. Its first save is the session's start.
        self._initializing = False

    # The engine's provider.

    @classmethod
    def create_provider(cls) -> SessionStateProvider:
        """Return the provider this engine binds the core to (engines implement this)."""
        raise NotImplementedError("engines must provide a create_provider() classmethod")

    @classmethod
    def get_provider(cls) -> SessionStateProvider:
        """Return the engine's provider, built once per process and settings."""
        return registry.provider_for(cls)

    @cached_property
    def serializer(self) -> Any:
        return import_string(settings.SESSION_SERIALIZER)

    @property
    def codec(self) -> Codec:
        """How this session's dict is stored: live objects, or bytes through the serializer."""
        return self._codec or self._serializing_codec()

    def _serializing_codec(self) -> Codec:
        if type(self).serializer is StateModeSessionBase.__dict__["serializer"]:
            self._codec = codec_named(settings.SESSION_SERIALIZER)
        else:
            self._codec = codec_for(self.serializer, settings.SESSION_SERIALIZER)
        return self._codec

    # Access modes.

    @property
    def access(self) -> SessionStateMode | None:
        """The session's mode in this request (None: direct use, Django's semantics)."""
        source = self._mode_source
        if source is not None:
            # Touched before the view's mode was known (another middleware read the session
            # before process_view): ask now, once. The middleware resolves the URL only here,
            # so a request whose session waits for its view is resolved once, by Django.
            self._mode_source = None
            self._access = source()
        return self._access

    @access.setter
    def access(self, mode: SessionStateMode | None) -> None:
        self._mode_source = None
        self._access = mode

    @property
    def mode_pending(self) -> bool:
        """Say whether the mode is still to be learned (nothing has asked for it yet)."""
        return self._mode_source is not None

    @property
    def modified(self) -> bool:
        return self._modified

    @modified.setter
    def modified(self, value: bool) -> None:
        # Every mutator of SessionBase sets modified = True: one choke point for ReadOnly.
        if value:
            self._check_writable()
        self._modified = value

    @property
    def loaded(self) -> bool:
        """Say whether the session's data was read in this request (or made empty)."""
        return hasattr(self, "_session_cache")

    @property
    def released(self) -> bool:
        """Say whether the request's lock was given up (``finish()`` or ``release()``)."""
        return self._released

    def _where(self) -> str:
        return f" (view {self.view_name})" if self.view_name else ""

    def _check_writable(self) -> None:
        if self.access == READ_ONLY:
            raise SessionStateReadOnly(
                f"The session is read-only in this request{self._where()}: the view is marked "
                "ReadOnly (@session_readonly or session_state = 'ReadOnly'). Mark it ReadWrite "
                "to change the session."
            )
        if self._released and self._released_by_view:
            raise SessionStateReadOnly(
                f"The session was released early with request.session.release(){self._where()}"
                " and can no longer be changed in this request."
            )
        if self._released:
            # Nothing called release(): SessionStateMiddleware finished the request (saved and
            # unlocked), and code that runs after it, an outer middleware's response phase,
            # wrote. Blaming release() sent people looking for a call that does not exist.
            raise SessionStateReadOnly(
                f"The session was changed after SessionStateMiddleware had saved and released "
                f"it with the response{self._where()}: the write came from code that runs after "
                "it, such as the response phase of a middleware listed before "
                "SessionStateMiddleware in MIDDLEWARE. List that middleware after "
                "SessionStateMiddleware, or change the session in the view."
            )

    def _check_enabled(self) -> None:
        if self.access == DISABLED:
            raise SessionStateDisabled(
                f"Session state is disabled for this request{self._where()}. Remove "
                "@session_disabled (or session_state = 'Disabled') from the view, or set "
                "STATEMODES_DEFAULT_ACCESS to 'ReadWrite' or 'ReadOnly', to use request.session."
            )

    def set_access(self, mode: SessionStateMode) -> None:
        """Switch to the view's mode once it is known (the middleware, before the view)."""
        run(self._set_access(mode), self._provider)

    async def aset_access(self, mode: SessionStateMode) -> None:
        await arun(self._set_access(mode), self._provider)

    def _set_access(self, mode: SessionStateMode) -> Op:
        if mode != READ_WRITE and self.access == READ_WRITE and self.loaded:
            # Read, locked, before a view that must not hold the lock: Django's CSRF middleware
            # does so in its request phase with CSRF_USE_SESSIONS (cookieless sites need it).
            # Unlock at once, without saving, or the session's next request would wait.
            self.access = mode
            return self._finish(False)
        if mode == READ_WRITE and self.access != READ_WRITE and self.loaded:
            # Read without the lock before a ReadWrite view: read again, locked, so the view's
            # writes cannot lose a concurrent update.
            del self._session_cache
        self.access = mode
        return None

    # Reading.

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

    def _session_data(self) -> Steps[dict[str, Any]]:
        """``_get_session()`` as steps, for operations that read the session on their way."""
        self._check_enabled()
        self.accessed = True
        if not self.loaded:
            data: dict[str, Any] = {}
            if self._session_key is not None:
                data = yield from self._load()
            self._session_cache = data
        return self._session_cache

    def load(self) -> dict[str, Any]:
        op = self._load_op()
        if type(op) is tuple:  # run()'s first step, inlined: one call loads nearly every session
            if _get_running_loop() is not None:  # C-level; the call only in a loop's thread
                refuse_sync()
            name, args, kwargs, then = op
            op = then(getattr(self._provider, name)(*args, **kwargs))
            if type(op) is dict:
                return op
        data: dict[str, Any] = run(op, self._provider)
        return data

    async def aload(self) -> dict[str, Any]:
        data: dict[str, Any] = await arun(self._load_op(), self._provider)
        return data

    def _load(self) -> Steps[dict[str, Any]]:
        data: dict[str, Any] = yield from steps_of(self._load_op())
        return data

    def _load_op(self) -> Op:
        key = self._session_key
        if key is None:
            return {}
        if self.access == READ_WRITE and not self._released:
            return ("get_exclusive", (key,), NO_KEYWORDS, self._loaded)
        return ("get", (key,), NO_KEYWORDS, self._got)

    def _wait_then_load(self, held: StateItem) -> Steps[dict[str, Any]]:
        assert self._session_key is not None
        item = yield from locking.wait(self._session_key, held)
        data: dict[str, Any] = yield from steps_of(self._loaded(item, True))
        return data

    def _got(self, item: StateItem | None) -> Op:
        return self._loaded(item, False)

    def _loaded(self, item: StateItem | None, locked: bool = True) -> Op:
        """Continue a load with the item ``get_exclusive`` (``locked``) or ``get`` found."""
        if locked and item is not None and item.locked:
            return self._wait_then_load(item)  # held by another request: wait in the queue
        key = self._session_key
        if item is None or key is None:
            source = conf.STATEMODES_IMPORT_FROM
            # Not twice per load, nor in the old engine's own read when it is one of ours.
            if (
                source is not None
                and key is not None
                and not self._adopting
                and not adoption.reading.get()
            ):
                return self._adopt(source, key)
            # Never create a record on load (CVE-2015-5143); a fresh key is issued on save.
            self._session_key = None
            return {}
        if locked:
            self._lock_id, self._locked_key = item.lock_id, key
            locking.lock_stats.acquired += 1
            if self._released:
                # The request ended while this load was in flight: a sync view under ASGI runs
                # on in its thread after its client left and the async middleware released
                # (``_finish``). The id is published before the flag is read, and there the
                # flag is set before the id is read: one of the two always releases the lock.
                self._lock_id = self._locked_key = None
                return ("release", (key, item.lock_id), NO_KEYWORDS, _nothing_loaded)
        if item.initialize:
            self._initializing = True
        # users.ON is None only until the setting is first read: the common case is one test.
        if (users.ON or (users.ON is None and users.index_on())) and self._provider.indexes_users:
            users.current_session.set(key)  # kept by a password change in this request
        data = (self._codec or self._serializing_codec()).decode(item.data)
        if "_session_expiry" in data and _past(data["_session_expiry"]):
            # set_expiry(datetime) is absolute: the store slides, so the date is checked here.
            self._end(key, data, "expired")
            lock_id = self._lock_id
            self._lock_id = self._locked_key = None
            self._session_key = None
            return ("remove", (key, lock_id), NO_KEYWORDS, _nothing_loaded)
        return data

    def _adopt(self, source: str, key: str) -> Steps[dict[str, Any]]:
        """Move the session ``key`` out of the engine the site switched from, then load it.

        ``STATEMODES_IMPORT_FROM`` (``core.adoption``). It is written as a new item, so of two
        requests that race here one moves it and both then load it, in the usual way (locked
        for ReadWrite). No ``session_start``: the user's session did not start now.
        """
        self._adopting = True
        found = yield (adoption.read, (source, key), NO_KEYWORDS)
        if found is not None:
            data, timeout = found
            try:
                payload = self.codec.encode(data)
            except UNENCODABLE as exc:
                # Left in the old store: rolling back finds it there.
                adoption.logger.warning("Session %s... not moved from %s: %s", key[:8], source, exc)
            else:
                keywords = {"lock_id": None, "timeout": timeout, "new_item": True}
                if (yield ("set_and_release", (key, payload), keywords)):
                    user_id = data.get(users.AUTH_SESSION_KEY)
                    if user_id is not None and users.index_on() and self._provider.indexes_users:
                        no_client = {"ip": None, "user_agent": None}
                        yield ("bind_user", (key, str(user_id)), no_client)
                yield (adoption.forget, (source, key), NO_KEYWORDS)
        # Load by the usual path: a concurrent request of this key may have moved it first.
        loaded: dict[str, Any] = yield from steps_of(self._load_op())
        return loaded

    def exists(self, session_key: str) -> bool:
        found: bool = run(self._exists(session_key), self._provider)
        return found

    async def aexists(self, session_key: str) -> bool:
        found: bool = await arun(self._exists(session_key), self._provider)
        return found

    def _exists(self, session_key: str) -> Steps[bool]:
        return (yield ("get", (session_key,), NO_KEYWORDS)) is not None

    # Values: checked where they are stored, not as a mystery at response time.

    def __setitem__(self, key: str, value: Any) -> None:
        if self.access == READ_ONLY or self._released:
            self._check_writable()
        codec = self._codec or self._serializing_codec()
        if codec.checks_values:
            codec.check_value(key, value)
        self._get_session()[key] = value
        self._modified = True  # SessionBase sets ``modified``; the property's check ran above

    async def aset(self, key: str, value: Any) -> None:
        self._check_writable()
        self.codec.check_value(key, value)  # aset is no hot path: no shortcut
        await super().aset(key, value)

    def update(self, dict_: Any) -> None:  # type: ignore[override]
        self._check_update(dict_)
        super().update(dict_)

    async def aupdate(self, dict_: Any) -> None:
        self._check_update(dict_)
        await super().aupdate(dict_)

    async def adelete_test_cookie(self) -> None:
        # Django's twin deletes from the dict without setting ``modified`` (its sync
        # delete_test_cookie does, through __delitem__): ours marks it, as the sync method does,
        # so a ReadOnly request is refused alike and the change is saved.
        del (await self._aget_session())[self.TEST_COOKIE_NAME]
        self.modified = True

    def _check_update(self, dict_: Any) -> None:
        self._check_writable()
        for key, value in dict(dict_).items():
            self.codec.check_value(key, value)

    # Saving.

    def _get_new_session_key(self) -> str:
        # No exists() round trip per new key: the insert is atomic and refuses a collision
        # (CreateError), and create() then simply tries another key.
        return get_random_string(32, VALID_KEY_CHARS)

    async def _aget_new_session_key(self) -> str:
        return self._get_new_session_key()

    def create(self) -> None:
        run(self._create(), self._provider)

    async def acreate(self) -> None:
        await arun(self._create(), self._provider)

    def _create(self) -> Steps[None]:
        while True:
            self._session_key = self._get_new_session_key()
            try:
                yield from self._save(must_create=True, release=False)
            except CreateError:
                continue  # key collision: try another
            self.modified = True
            return

    def save(self, must_create: bool = False) -> None:
        run(self._save(must_create=must_create, release=False), self._provider)

    async def asave(self, must_create: bool = False) -> None:
        await arun(self._save(must_create=must_create, release=False), self._provider)

    def _save(self, *, must_create: bool, release: bool) -> Steps[None]:
        if self._session_key is None:
            return (yield from self._create())
        if not must_create and not self.loaded:
            # Read as steps, not by _store's _get_session(): asave() must not block the loop.
            yield from self._session_data()
        yield from steps_of(self._store(must_create, release))

    def _store(self, must_create: bool, release: bool) -> Op:
        """Return the op that stores the session: the ``set_and_release`` call, then ``_stored``."""
        if self.access == READ_ONLY or self._released:
            self._check_writable()
        try:
            data = self._session_cache  # loaded: nearly every save at the request's end
        except AttributeError:
            data = self._get_session(no_load=must_create)
        payload = (self._codec or self._serializing_codec()).encode(data)
        if data.get("_session_expiry"):
            timeout = max(0, self.get_expiry_age())
        else:
            # What get_expiry_age() returns without a custom expiry, minus its timezone.now().
            timeout = max(0, self.get_session_cookie_age())
        keywords = {
            "lock_id": None if must_create else self._lock_id,
            "timeout": timeout,
            "new_item": must_create,
            "keep_lock": not release,
        }
        key = self._session_key
        assert key is not None  # _save and _finish create a key first
        self._storing = (key, keywords)  # for _stored, the continuation
        return ("set_and_release", (key, payload), keywords, self._stored)

    def _stored(self, stored: bool) -> Op:
        """Act on the store's answer to ``_store``: signals, a refused write, the lock's end."""
        key, keywords = self._storing
        must_create, release = keywords["new_item"], not keywords["keep_lock"]
        if stored and not must_create and not self._initializing:  # nearly every save
            if release:
                self._lock_id = self._locked_key = None
            return None if self._bind is None else self._bind_op(key)
        if must_create:
            if not stored:
                raise CreateError
            if not self._cycling:
                session_start.send(sender=type(self), session_key=key, session=self)
            return None if self._bind is None else self._bind_op(key)
        if not stored:
            if keywords["lock_id"] is not None:  # this request's lock was broken meanwhile
                locking.refused(key)
                self._lock_id = self._locked_key = None
                raise SessionLockLost(
                    "The session's lock was broken after STATEMODES_LOCK_TIMEOUT; "
                    "this request's changes were not saved."
                )
            raise UpdateError
        self._initializing = False  # its first save is the session's start (InitializeItem)
        session_start.send(sender=type(self), session_key=key, session=self)
        if release:
            self._lock_id = self._locked_key = None
        return None if self._bind is None else self._bind_op(key)

    # The index of sessions by user (STATEMODES_USER_INDEX, core.users).

    def bind_to_user(self, user_id: str, *, ip: str | None, user_agent: str | None) -> None:
        """Bind the session to ``user_id`` in the store's index once it is next stored.

        Called at a sign-in (``user_logged_in``): the record may not exist yet, and the key
        may still change (``login()`` cycles it), so the bind follows the save.
        """
        self._bind = (user_id, ip, user_agent)

    def _bind_op(self, key: str) -> Op:
        assert self._bind is not None
        user_id, ip, agent = self._bind
        self._bind = None
        users.seen(key)  # just bound: no touch is due for an interval
        keywords = {"ip": ip, "user_agent": agent}
        return ("bind_user", (key, user_id), keywords, _nothing)

    def _touching(self, op: Op) -> Op:
        """``op`` (the request's end), then a ``touch_user`` if the session's is due."""
        key = self._session_key
        if self._bind is not None or not (users.ON or users.index_on()):
            return op  # bound by this very save: last_seen is now
        try:
            data = self._session_cache
        except AttributeError:
            return op  # never read: nothing to say the client was here signed in
        if key is None or users.AUTH_SESSION_KEY not in data or not users.touch_due(key):
            return op
        return self._then_touch(op, key)

    def _then_touch(self, op: Op, key: str) -> Steps[Any]:
        result = yield from steps_of(op)
        try:
            yield ("touch_user", (key,), {"ip": None, "user_agent": None})
        except Exception:
            # "Last seen" is best effort: the request itself was served and saved.
            users.logger.warning("Could not record when session %s... was last seen.", key[:8])
        return result

    # The request's end (called by SessionStateMiddleware).

    def finish(self, save: bool) -> None:
        """Save if ``save`` and release the lock, in one store call; idempotent.

        A ReadOnly session is never saved: nothing in it can have changed.
        """
        op = self._finish(save)
        if users.ON is not False and self._provider.indexes_users:  # sessions by user
            op = self._touching(op)
        if type(op) is tuple:  # run()'s first step, inlined: one call ends nearly every request
            if _get_running_loop() is not None:  # C-level; the call only in a loop's thread
                refuse_sync()
            name, args, kwargs, then = op
            op = then(getattr(self._provider, name)(*args, **kwargs))
        if op is not None:
            run(op, self._provider)

    async def afinish(self, save: bool) -> None:
        op = self._finish(save)
        if users.ON is not False and self._provider.indexes_users:  # sessions by user
            op = self._touching(op)
        await arun(op, self._provider)

    def _finish(self, save: bool) -> Op:
        if self._released:
            return None
        if save and self.access != READ_ONLY:
            if self._session_key is None:
                return self._finish_new()
            if not self.loaded:
                return self._finish_unread()
            op = self._store(False, True)
            # The request's end, whatever the store answers, or if it cannot be reached.
            self._lock_id = self._locked_key = None
            self._released = True
            return op
        self._released = True  # before reading the lock: see _loaded
        lock_id, locked_key = self._lock_id, self._locked_key
        self._lock_id = self._locked_key = None
        if lock_id is not None and locked_key is not None:
            return ("release", (locked_key, lock_id), NO_KEYWORDS, _nothing)
        return None

    def _finish_unread(self) -> Steps[None]:
        # finish(True) before any read (the middleware never does: an unread session is
        # empty to it): read as steps, so afinish() never reads through the blocking load().
        yield from self._session_data()
        yield from steps_of(self._finish(True))

    def _finish_new(self) -> Steps[None]:
        try:
            yield from self._create()
        finally:
            self._end_request()

    def _end_request(self) -> None:
        self._lock_id = self._locked_key = None
        self._released = True

    def release(self) -> None:
        """Save (if changed) and unlock now; the session is read-only for the rest of the request.

        For long views: other requests of the session no longer wait for this one.
        """
        self._released_by_view = True
        self.finish(self._wants_save())

    async def arelease(self) -> None:
        self._released_by_view = True
        await self.afinish(self._wants_save())

    def _wants_save(self) -> bool:
        return (self._modified or settings.SESSION_SAVE_EVERY_REQUEST) and not self.is_empty()

    def refresh(self) -> None:
        """Load the session if it is not loaded yet (for ``SESSION_SAVE_EVERY_REQUEST``).

        In a ReadOnly request, where nothing is saved, the read slides the stored expiry (as
        ASP.NET's ResetItemTimeout does for pages that do not write) and drops an unknown key,
        so the cookie the middleware re-sends matches the record.
        """
        run(self._session_data(), self._provider)

    async def arefresh(self) -> None:
        await arun(self._session_data(), self._provider)

    # Ending.

    def delete(self, session_key: str | None = None) -> None:
        run(self._delete(session_key), self._provider)

    async def adelete(self, session_key: str | None = None) -> None:
        await arun(self._delete(session_key), self._provider)

    def _delete(self, session_key: str | None) -> Steps[None]:
        if session_key is None:
            if self._session_key is None:
                return
            session_key = self._session_key
        mine = session_key == self._locked_key
        yield ("remove", (session_key, self._lock_id if mine else None), NO_KEYWORDS)
        if mine:
            self._lock_id = self._locked_key = None

    def flush(self) -> None:
        run(self._flush(), self._provider)

    async def aflush(self) -> None:
        await arun(self._flush(), self._provider)

    def _flush(self) -> Steps[None]:
        # SessionBase.flush(), plus ASP.NET's Session_End for an abandoned session.
        self._check_enabled()
        self._check_writable()
        if self._session_key is not None and session_end.has_listeners():
            data = yield from self._session_data()
            self._end(self._session_key, dict(data), "abandoned")
        self.clear()
        yield from self._delete(None)
        self._session_key = None

    def cycle_key(self) -> None:
        run(self._cycle_key(), self._provider)

    async def acycle_key(self) -> None:
        await arun(self._cycle_key(), self._provider)

    def _cycle_key(self) -> Steps[None]:
        # SessionBase.cycle_key(); the new key's first save is no new session_start.
        self._cycling = True
        try:
            data = yield from self._session_data()
            key = self._session_key
            user_id = data.get(users.AUTH_SESSION_KEY)
            if key and user_id and self._provider.indexes_users and users.index_on():
                # Signed in (update_session_auth_hash): the new key is bound as the old one was.
                yield from self._rebind(key, str(user_id))
            yield from self._create()
            self._session_cache = data
            if key:
                yield from self._delete(key)
        finally:
            self._cycling = False

    def _rebind(self, key: str, user_id: str) -> Steps[None]:
        if self._bind is not None:
            return
        infos = yield ("user_sessions", (user_id,), NO_KEYWORDS)
        old = next((info for info in infos if info.session_key == key), None)
        if old is not None:
            self._bind = (user_id, old.ip, old.user_agent)

    def _end(self, session_key: str, data: dict[str, Any] | None, reason: str) -> None:
        session_end.send(sender=type(self), session_key=session_key, data=data, reason=reason)

    # Expired sessions.

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

        ``on_batch`` is called with the running total after each batch (progress displays).
        """
        on_expired = cls._expired if session_end.has_listeners() else None
        return cls.get_provider().purge_expired(
            on_expired=on_expired, dry_run=dry_run, batch_size=batch_size, on_batch=on_batch
        )

    @classmethod
    async def aclear_expired(cls) -> None:
        if cls.get_provider().stores_objects:
            cls.purge()  # the process's own memory: no I/O to wait for, no thread
            return
        # A batch job over the whole store, not a request's call; providers have no async
        # purge yet, so it runs in a thread, as Django's SessionBase.aclear_expired does.
        await sync_to_async(cls.purge, thread_sensitive=False)()

    @classmethod
    def _expired(cls, item: ExpiredItem, reason: str = "expired") -> None:
        data = None if item.data is None else cls().codec.decode(item.data)
        session_end.send(sender=cls, session_key=item.session_key, data=data, reason=reason)


def _past(expiry: Any) -> bool:
    if not isinstance(expiry, str):
        return False
    try:
        when = datetime.fromisoformat(expiry)
    except ValueError:
        return False
    now = timezone.now() if timezone.is_aware(when) else datetime.now()
    return when <= now


def _nothing(answer: object) -> None:
    """The continuation of a call whose answer does not matter."""


def _nothing_loaded(answer: object) -> dict[str, Any]:
    return {}
