"""``SessionStateMiddleware``: one line in MIDDLEWARE replaces Django's ``SessionMiddleware``.

Django's cookie handling is kept exactly (attributes, ``Vary: Cookie``, deletion of emptied
sessions, ``SESSION_SAVE_EVERY_REQUEST``, no save on 5xx, ``SessionInterrupted``). Added:

- the view's session-state mode, read before the view runs, from a decorator marker, a
  ``session_state`` class attribute or ``STATEMODES_DEFAULT_ACCESS``;
- with our engines, the lock taken lazily on first touch and released with the save, in one
  store call, when the response is produced (without saving on an exception or a 5xx);
- a 503 page, with ``Retry-After``, when the store is unreachable or the session's queue is full
  (``unavailable``: a template or a site's view; internals only under ``DEBUG``);
- session keys checked at the edge: a key outside Django's alphabet and length is no key.

A request runs, in order: the key transport (``CookieTransport``, or the cookieless
``UriTransport`` that ``STATEMODES_COOKIELESS`` chooses) wraps the whole cycle;
``process_request`` builds the lazy session; ``process_view`` gives it the mode of the view
Django resolved (the URL is resolved a second time only for a session another middleware
touched before, to learn the mode it is read with), switching it if it was already read; the
response side saves and releases the session, then sends its key. The response side is written
once, as an op on the session (``core.calls``: a session call and its continuation), run by
``run`` (sync) or ``arun`` (async, awaiting ``afinish`` for ``finish``), as the session core
runs its provider calls; the release after a failure is steps run the same way.
``process_view`` makes a single session call, so its twins share a helper instead.

It subclasses Django's middleware so that the admin's check (admin.E410) accepts it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from importlib import import_module
from threading import get_ident
from typing import Any, Protocol, TypeGuard, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase, UpdateError
from django.contrib.sessions.exceptions import SessionInterrupted
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.urls import resolve
from django.utils.cache import patch_vary_headers
from django.utils.http import http_date

from django_statemodes.backends.off import SessionStore as OffSessionStore
from django_statemodes.conf import conf
from django_statemodes.cookieless import KEY_ALPHABET
from django_statemodes.cookieless_handler import AsyncRespond, Respond, UriTransport
from django_statemodes.core import locking
from django_statemodes.core.calls import NO_KEYWORDS, Op, Steps, arun, run
from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.decorators import view_mode
from django_statemodes.exceptions import SessionQueueFull, SessionStoreUnavailable
from django_statemodes.modes import DISABLED, READ_ONLY, SessionStateMode
from django_statemodes.unavailable import RETRY_AFTER, unavailable_response

__all__ = [
    "INTERRUPTED",
    "RETRY_AFTER",
    "CookieTransport",
    "KeyTransport",
    "SessionStateMiddleware",
    "unavailable_response",
    "valid_session_key",
]

logger = logging.getLogger("django_statemodes")

INTERRUPTED = (
    "The request's session was deleted before the request completed. The user may have "
    "logged out in a concurrent request, for example."
)

# A key the client sends is one Django could have made: its alphabet, at least the 8 characters
# ``_validate_session_key`` wants and at most the 40 its ``session_key`` column holds (Django and
# our engines make 32). Anything else (a NUL byte, 0xFF, 10,000 characters, SQL) is no key: no
# engine, ours or Django's, and no store ever sees it (PostgreSQL refused a NUL with a 500).
MIN_KEY_LENGTH = 8
MAX_KEY_LENGTH = 40


def valid_session_key(key: str | None) -> str | None:
    """Return ``key`` if it is a well-formed session key, else None (the request has no key)."""
    # The length first: a 10,000-character cookie is refused without scanning it. The alphabet
    # is the cookieless parser's, Django's VALID_KEY_CHARS; only the lengths differ (a URL
    # carries our 32-character keys, a cookie may carry any key Django accepts).
    if key is None or not MIN_KEY_LENGTH <= len(key) <= MAX_KEY_LENGTH:
        return None
    return key if KEY_ALPHABET.issuperset(key) else None


ViewFunc = Callable[..., Any]
#: No arguments.
NO_ARGS: tuple[Any, ...] = ()
ProcessView = Callable[[HttpRequest, ViewFunc, Any, Any], "Awaitable[None] | None"]


# How the session key travels.


class KeyTransport(Protocol):
    """How the session key goes between client and server (``STATEMODES_COOKIELESS``)."""

    def wrap(self, request: HttpRequest, respond: Respond) -> HttpResponseBase:
        """Return ``respond(request)`` (the session's request cycle), or an answer of its own."""
        ...

    async def awrap(self, request: HttpRequest, respond: AsyncRespond) -> HttpResponseBase:
        """``wrap()`` on the async path."""
        ...

    def session_key(self, request: HttpRequest) -> str | None:
        """Return the session key the request carries, or None."""
        ...

    def before_save(self, request: HttpRequest) -> None:
        """Run after the view and the inner middleware, before the session is saved."""
        ...

    def send_key(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        session: SessionBase,
        max_age: int | None,
        expires: str | None,
    ) -> None:
        """Give the client the key of the session just saved."""
        ...


class CookieTransport:
    """The session key in Django's session cookie (``UseCookies``, the default)."""

    def wrap(self, request: HttpRequest, respond: Respond) -> HttpResponseBase:
        return respond(request)

    async def awrap(self, request: HttpRequest, respond: AsyncRespond) -> HttpResponseBase:
        return await respond(request)

    def session_key(self, request: HttpRequest) -> str | None:
        return request.COOKIES.get(settings.SESSION_COOKIE_NAME)

    def before_save(self, request: HttpRequest) -> None:
        """Nothing to do: a cookie is bound to nothing."""

    def send_key(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        session: SessionBase,
        max_age: int | None,
        expires: str | None,
    ) -> None:
        response.set_cookie(
            settings.SESSION_COOKIE_NAME,
            session.session_key or "",
            max_age=max_age,
            expires=expires,
            domain=settings.SESSION_COOKIE_DOMAIN,
            path=settings.SESSION_COOKIE_PATH,
            secure=bool(settings.SESSION_COOKIE_SECURE),
            httponly=bool(settings.SESSION_COOKIE_HTTPONLY),
            samesite=settings.SESSION_COOKIE_SAMESITE,
        )


@dataclass(slots=True)
class SaveDecision:
    """What the end of the request does with the session and its cookie."""

    #: Save the session (and send its key).
    save: bool
    #: Delete the session cookie: the request sent one and the session is now empty.
    delete_cookie: bool
    #: The view read the session, so the response depends on the cookie (``Vary: Cookie``).
    accessed: bool

    def after(self, answer: object) -> SaveDecision:
        """The continuation of the session call that carries out this decision."""
        return self


def _session_to_finish(request: HttpRequest) -> SessionBase | None:
    """Return the request's session, or None if the response must not save, release or send it."""
    session: SessionBase | None = getattr(request, "session", None)
    if session is None or getattr(session, "disabled", False):
        return None  # Off engine, or a Disabled view on Django's engines
    if isinstance(session, StateModeSessionBase):
        if session.mode_pending and not settings.SESSION_SAVE_EVERY_REQUEST:
            # No view ran (a 404, a middleware's own answer) and nothing touched the session:
            # nothing to save or release, and no reason to resolve the URL to learn its mode.
            return None
        if session.access == DISABLED:
            return None  # a Disabled view: no I/O, no cookie
    return session


def _refreshes_only(session: SessionBase) -> TypeGuard[StateModeSessionBase]:
    """A ReadOnly session under ``SESSION_SAVE_EVERY_REQUEST``: its cookie is re-sent, unsaved."""
    return (
        bool(settings.SESSION_SAVE_EVERY_REQUEST)
        and isinstance(session, StateModeSessionBase)
        and session.access == READ_ONLY
    )


def _decide(request: HttpRequest, response: HttpResponseBase, session: SessionBase) -> SaveDecision:
    """Decide as Django's ``SessionMiddleware.process_response`` does."""
    empty = session.is_empty()
    delete_cookie = settings.SESSION_COOKIE_NAME in request.COOKIES and empty
    save = (
        not delete_cookie
        and (session.modified or bool(settings.SESSION_SAVE_EVERY_REQUEST))
        and not empty
        and response.status_code < 500  # Django: skip the save for 5xx responses
    )
    return SaveDecision(save, delete_cookie, session.accessed)


def _view_name(view_func: ViewFunc) -> str:
    """Name the view in ReadOnly and Disabled errors (class-based views: the class)."""
    target = getattr(view_func, "view_class", view_func)
    return f"{target.__module__}.{getattr(target, '__qualname__', repr(target))}"


def _abandon(session: StateModeSessionBase) -> Steps[None]:
    """Release without saving, after a failure before a response exists."""
    try:
        yield ("finish", (False,), NO_KEYWORDS)
    except Exception:
        logger.exception("Could not release the session lock after an error.")


def _default_mode() -> SessionStateMode:
    # One of the modes: a system check says so at startup.
    return cast(SessionStateMode, conf.STATEMODES_DEFAULT_ACCESS)


def _mode_before_view(request: HttpRequest) -> SessionStateMode:
    """The mode of a session touched before ``process_view``: resolve the URL to learn it.

    Django resolves the URL again in its handler: it sets ``request.resolver_match`` only
    after the request phase of every middleware, and never reuses one.
    """
    try:
        match = resolve(request.path_info, getattr(request, "urlconf", None))
    except Http404:
        mode = None  # no view: the 404 page gets the default mode
    else:
        mode = view_mode(match.func)
    mode = mode or _default_mode()
    # Until the view runs, other middleware may still read the session (CSRF with
    # CSRF_USE_SESSIONS) without locking; process_view then disables it.
    return READ_ONLY if mode == DISABLED else mode


#: ``SERVER_SOFTWARE`` of servers that start a thread per request (Django's ``runserver``, on
#: wsgiref's ``WSGIServer``): their waiting requests take no thread from anyone, so the limit
#: on a session's waiting threads (``STATEMODES_LOCK_WAITING_THREADS``) does not apply there.
THREAD_PER_REQUEST = ("WSGIServer/",)


class SessionStateMiddleware(SessionMiddleware):
    """Load sessions lazily with the view's mode; save and unlock them with the response."""

    sync_capable = True
    async_capable = True

    def __init__(
        self, get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]
    ) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        engine = import_module(settings.SESSION_ENGINE)
        self.SessionStore = engine.SessionStore
        self.locking = issubclass(self.SessionStore, StateModeSessionBase)
        self.transport: KeyTransport = CookieTransport()
        #: The cookieless transport (``UseUri``, ``AutoDetect``), also ``transport``; else None.
        self.cookieless: UriTransport | None = None
        if conf.STATEMODES_COOKIELESS != "UseCookies":
            # Cookie requests under AutoDetect still use the cookie, through this fallback.
            self.cookieless = UriTransport(self.SessionStore, cookies=self.transport)
            self.transport = self.cookieless

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        if request.META.get("SERVER_SOFTWARE", "").startswith(THREAD_PER_REQUEST):
            # runserver starts a thread per request: there is no pool for one session to drain.
            return self.transport.wrap(request, self._respond)
        # This thread serves a request until it returns: the waiters of one session may hold
        # only a share of such threads (core.locking), derived from the most seen at once.
        thread = get_ident()
        serving = locking.serving
        serving.add(thread)
        if len(serving) > locking.lock_stats.peak_serving:
            locking.lock_stats.peak_serving = len(serving)  # a max: a lost race changes nothing
        try:
            return self.transport.wrap(request, self._respond)
        finally:
            serving.discard(thread)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        return await self.transport.awrap(request, self._arespond)

    def _respond(self, request: HttpRequest) -> HttpResponseBase:
        self.process_request(request)
        try:
            response = cast(HttpResponseBase, self.get_response(request))
            self.transport.before_save(request)
        except BaseException:
            session = getattr(request, "session", None)
            if isinstance(session, StateModeSessionBase):
                run(_abandon(session), session)
            raise
        return self.process_response(request, response)

    async def _arespond(self, request: HttpRequest) -> HttpResponseBase:
        self.process_request(request)
        try:
            response = await cast(Awaitable[HttpResponseBase], self.get_response(request))
            self.transport.before_save(request)
        except BaseException:
            # CancelledError included (a client that went away): the cancellation is delivered
            # once, so this await still runs, and the release it sends is shielded from a
            # second one (core.cancellation).
            session = getattr(request, "session", None)
            if isinstance(session, StateModeSessionBase):
                await arun(_abandon(session), session)
            raise
        return await self.aprocess_response(request, response)

    # Hooks for subclasses: where the key comes from and how it goes back (the transport's).

    def get_session_key(self, request: HttpRequest) -> str | None:
        """Return the session key the request carries (the cookie, or the cookieless URL)."""
        return self.transport.session_key(request)

    def set_session_cookie(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        session: SessionBase,
        max_age: int | None,
        expires: str | None,
    ) -> None:
        """Send the saved session's key to the client (a cookie; cookieless: the URL)."""
        self.transport.send_key(request, response, session, max_age, expires)

    # Request side.

    def process_request(self, request: HttpRequest) -> None:
        # Validated here, once, whatever the transport or a subclass's get_session_key returned.
        session_key = valid_session_key(self.get_session_key(request))
        if not self.locking:
            request.session = self.SessionStore(session_key)
            return
        # The view's mode is learned from the view Django resolves, in process_view: no I/O
        # happens before, so nothing needs it sooner. Only if another middleware touches the
        # session first (CsrfViewMiddleware does, in its request phase, with
        # CSRF_USE_SESSIONS) does the session ask _mode_before_view, which resolves the URL
        # then, as ASP.NET knows the handler before AcquireRequestState.
        store = cast(type[StateModeSessionBase], self.SessionStore)
        request.session = store(session_key, mode_source=partial(_mode_before_view, request))

    @property
    def process_view(self) -> ProcessView:
        """Django's view hook, in the handler's mode.

        Django runs a sync ``process_view`` in a thread under ASGI; its async twin awaits the
        session's async method instead. Both decide in ``_switch_for_view``.
        """
        return self._aprocess_view if self.async_mode else self._process_view

    def _process_view(
        self, request: HttpRequest, view_func: ViewFunc, view_args: Any, view_kwargs: Any
    ) -> None:
        switch = self._switch_for_view(request, view_func)
        if switch is not None:
            session, mode = switch
            session.set_access(mode)

    async def _aprocess_view(
        self, request: HttpRequest, view_func: ViewFunc, view_args: Any, view_kwargs: Any
    ) -> None:
        switch = self._switch_for_view(request, view_func)
        if switch is not None:
            session, mode = switch
            await session.aset_access(mode)

    def _switch_for_view(
        self, request: HttpRequest, view_func: ViewFunc
    ) -> tuple[StateModeSessionBase, SessionStateMode] | None:
        """Return the session and the mode to switch it to (``set_access``), if any.

        ``set_access`` unlocks a session read locked before a ReadOnly or Disabled view, and
        drops one read unlocked before a ReadWrite view, so that it is read again with the lock.
        """
        mode = view_mode(view_func)
        session = request.session
        if isinstance(session, StateModeSessionBase):
            session.view_name = _view_name(view_func)
            if session.mode_pending:
                # Untouched so far: nothing was read, so taking the mode is all there is to do.
                session.access = mode or _default_mode()
                return None
            if mode is None:
                return None  # unmarked: the session keeps the default mode it was read with
            return session, mode
        if mode is None:
            return None
        if mode == DISABLED:
            # Django's own engines: replace the session with one that refuses every use.
            request.session = OffSessionStore()
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, (SessionStoreUnavailable, SessionQueueFull)):
            self._log_unavailable(request, exception)
            return unavailable_response(request, exception)
        return None

    def _log_unavailable(self, request: HttpRequest, exc: Exception) -> None:
        if isinstance(exc, SessionStoreUnavailable):
            logger.error(
                "Session store unavailable (%s) for %s: %s Check %s.",
                settings.SESSION_ENGINE,
                request.path,
                exc,
                exc.setting,
            )
        else:
            logger.warning("Session queue full for %s: %s", request.path, exc)

    # Response side.

    def process_response(  # type: ignore[override]
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        session = _session_to_finish(request)
        if session is None:
            return response
        try:
            decision: SaveDecision = run(self._end(request, response, session), session)
        except (UpdateError, SessionStoreUnavailable, SessionQueueFull) as exc:
            return self._finish_failed(request, response, exc)
        return self._cookie_and_vary(request, response, session, decision)

    async def aprocess_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        session = _session_to_finish(request)
        if session is None:
            return response
        try:
            decision: SaveDecision = await arun(self._end(request, response, session), session)
        except (UpdateError, SessionStoreUnavailable, SessionQueueFull) as exc:
            return self._finish_failed(request, response, exc)
        return self._cookie_and_vary(request, response, session, decision)

    def _end(self, request: HttpRequest, response: HttpResponseBase, session: SessionBase) -> Op:
        """The session's end, as an op on the session: save (or not) and release, then decide.

        Its result is the ``SaveDecision`` the cookie follows.
        """
        if _refreshes_only(session):
            then = partial(self._save, request, response, session)
            return ("refresh", NO_ARGS, NO_KEYWORDS, then)
        return self._save(request, response, session)

    def _save(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        session: SessionBase,
        refreshed: object = None,
    ) -> Op:
        decision = _decide(request, response, session)
        if isinstance(session, StateModeSessionBase):
            return ("finish", (decision.save,), NO_KEYWORDS, decision.after)
        if decision.save:
            return ("save", NO_ARGS, NO_KEYWORDS, decision.after)
        return decision

    def _finish_failed(
        self, request: HttpRequest, response: HttpResponseBase, exc: Exception
    ) -> HttpResponseBase:
        """Answer for a final save or release that failed."""
        if isinstance(exc, UpdateError):
            # Django's rule: the session was deleted meanwhile (or, here, its lock broken).
            raise SessionInterrupted(INTERRUPTED) from None
        self._log_unavailable(request, exc)
        if response.status_code >= 500:
            return response  # already failing; the release could not be sent either
        return unavailable_response(request, exc)

    def _cookie_and_vary(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        session: SessionBase,
        decision: SaveDecision,
    ) -> HttpResponseBase:
        if decision.delete_cookie:
            response.delete_cookie(
                settings.SESSION_COOKIE_NAME,
                path=settings.SESSION_COOKIE_PATH,
                domain=settings.SESSION_COOKIE_DOMAIN,
                samesite=settings.SESSION_COOKIE_SAMESITE,
            )
        elif decision.save:
            if session.get_expire_at_browser_close():
                max_age = None
                expires = None
            else:
                max_age = session.get_expiry_age()
                expires = http_date(time.time() + max_age)
            self.set_session_cookie(request, response, session, max_age, expires)
        # A deleted or newly set session cookie must be varied on too (CVE-2026-35192).
        if decision.accessed or decision.delete_cookie or decision.save:
            patch_vary_headers(response, ("Cookie",))
        return response
