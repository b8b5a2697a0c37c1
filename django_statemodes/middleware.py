"""``SessionStateMiddleware``: one line in MIDDLEWARE replaces Django's ``SessionMiddleware``.

Django's cookie handling is kept exactly (attributes, ``Vary: Cookie``, deletion of emptied
sessions, ``SESSION_SAVE_EVERY_REQUEST``, no save on 5xx, ``SessionInterrupted``). Added:

- the view's session-state mode, read before the view runs, from a decorator marker, a
  ``session_state`` class attribute or ``STATEMODES_DEFAULT_ACCESS``;
- with our engines, the lock taken lazily on first touch and released with the save, in one
  store call, when the response is produced (without saving on an exception or a 5xx);
- a 503 page, with ``Retry-After``, when the store is unreachable or the session's queue is full.

It subclasses Django's middleware so that the admin's check (admin.E410) accepts it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from importlib import import_module
from typing import TYPE_CHECKING, Any, TypeGuard, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase, UpdateError
from django.contrib.sessions.exceptions import SessionInterrupted
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.urls import resolve
from django.utils.cache import patch_vary_headers
from django.utils.html import escape
from django.utils.http import http_date

from django_statemodes.conf import conf
from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.decorators import view_mode
from django_statemodes.exceptions import SessionQueueFull, SessionStoreUnavailable
from django_statemodes.modes import DISABLED, READ_ONLY, READ_WRITE, SessionStateMode

if TYPE_CHECKING:
    from django_statemodes.cookieless_handler import CookielessHandler

logger = logging.getLogger("django_statemodes")

# Seconds a client is asked to wait after a 503.
RETRY_AFTER = 5

INTERRUPTED = (
    "The request's session was deleted before the request completed. The user may have "
    "logged out in a concurrent request, for example."
)


def unavailable_response(exc: Exception) -> HttpResponse:
    """Return the 503 page for a store that is down or a session queue that is full."""
    if isinstance(exc, SessionQueueFull):
        title = "Too many requests for this session"
    else:
        title = "Session state is unavailable"
    body = (
        f"<!doctype html><title>503 {title}</title><h1>{title}</h1>"
        f"<p>{escape(str(exc))}</p><p>Please try again in a few seconds.</p>"
    )
    response = HttpResponse(body, status=503)
    response["Retry-After"] = str(RETRY_AFTER)
    return response


def _locked_before_view(session: SessionBase, mode: SessionStateMode | None) -> bool:
    """Say whether the session was loaded, locked, before a view that must not hold the lock.

    Django's CSRF middleware reads the session in process_request when CSRF_USE_SESSIONS is on
    (cookieless sites need it), before the view's mode is known; a ReadOnly or Disabled view
    would otherwise keep that lock, and the session's next request would wait for the timeout.
    """
    return (
        isinstance(session, StateModeSessionBase)
        and mode in (READ_ONLY, DISABLED)
        and session.access == READ_WRITE
        and hasattr(session, "_session_cache")
    )


def _refreshes_only(session: SessionBase) -> TypeGuard[StateModeSessionBase]:
    """A ReadOnly session under ``SESSION_SAVE_EVERY_REQUEST``: its cookie is re-sent, unsaved."""
    return (
        bool(settings.SESSION_SAVE_EVERY_REQUEST)
        and isinstance(session, StateModeSessionBase)
        and session.access == READ_ONLY
    )


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
            # Django wraps a sync process_view in a thread under ASGI; ours never blocks.
            self.process_view = self._aprocess_view  # type: ignore[method-assign,assignment]
        engine = import_module(settings.SESSION_ENGINE)
        self.SessionStore = engine.SessionStore
        self.locking = issubclass(self.SessionStore, StateModeSessionBase)
        self.cookieless: CookielessHandler | None = None
        if conf.STATEMODES_COOKIELESS != "UseCookies":
            from django_statemodes.cookieless_handler import CookielessHandler

            self.cookieless = CookielessHandler(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        if self.cookieless is not None:  # with UseCookies, the only cost of cookieless mode
            return self.cookieless.call(request, self._respond)
        return self._respond(request)

    def _respond(self, request: HttpRequest) -> HttpResponseBase:
        self.process_request(request)
        try:
            response = self.get_response(request)
        except BaseException:
            self._abandon(request)
            raise
        return self.process_response(request, response)  # type: ignore[arg-type]

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if self.cookieless is not None:
            return await self.cookieless.acall(request, self._arespond)
        return await self._arespond(request)

    async def _arespond(self, request: HttpRequest) -> HttpResponseBase:
        self.process_request(request)
        try:
            response = await self.get_response(request)  # type: ignore[misc]
        except BaseException:
            await self._aabandon(request)
            raise
        return await self.aprocess_response(request, response)

    # Request side.

    def get_session_key(self, request: HttpRequest) -> str | None:
        """Return the session key the request carries (the cookie; cookieless mode rebinds it)."""
        return request.COOKIES.get(settings.SESSION_COOKIE_NAME)

    def process_request(self, request: HttpRequest) -> None:
        session_key = self.get_session_key(request)
        if self.locking:
            # The view's mode is known before any other middleware can touch the session
            # (CsrfViewMiddleware does, in its request phase, with CSRF_USE_SESSIONS): resolve
            # the URL now, as ASP.NET knows the handler before AcquireRequestState.
            mode = self._view_mode(request) or conf.STATEMODES_DEFAULT_ACCESS
            if mode == DISABLED:
                # Until the view runs, other middleware may still read the session (CSRF with
                # CSRF_USE_SESSIONS) without locking; process_view then disables it.
                mode = READ_ONLY
            store = cast(type[StateModeSessionBase], self.SessionStore)
            request.session = store(session_key, access=mode)  # type: ignore[arg-type]
        else:
            request.session = self.SessionStore(session_key)

    def _view_mode(self, request: HttpRequest) -> SessionStateMode | None:
        try:
            match = resolve(request.path_info, getattr(request, "urlconf", None))
        except Http404:
            return None  # no view: the 404 page gets the default mode
        return view_mode(match.func)

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: Any,
        view_kwargs: Any,
    ) -> None:
        mode = view_mode(view_func)
        if mode is None:
            return
        session = request.session
        target = getattr(view_func, "view_class", view_func)  # class-based views: the class
        name = f"{target.__module__}.{getattr(target, '__qualname__', repr(target))}"
        if isinstance(session, StateModeSessionBase):
            if _locked_before_view(session, mode):
                session.finish(False)  # unlock at once, without saving
            if (
                mode == READ_WRITE
                and session.access != READ_WRITE
                and hasattr(session, "_session_cache")
            ):
                # Touched before the view (by another middleware) without the lock: load
                # again, locked, so the view's writes cannot lose a concurrent update.
                del session._session_cache
            session.access = mode
            session.view_name = name
        elif mode == DISABLED:
            # Django's own engines: replace the session with one that refuses every use.
            from django_statemodes.backends.off import SessionStore as Off

            request._statemodes_disabled = True  # type: ignore[attr-defined]
            request.session = Off()

    async def _aprocess_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: Any,
        view_kwargs: Any,
    ) -> None:
        session = request.session
        if _locked_before_view(session, view_mode(view_func)):
            await session.afinish(False)  # type: ignore[attr-defined]
        SessionStateMiddleware.process_view(self, request, view_func, view_args, view_kwargs)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, (SessionStoreUnavailable, SessionQueueFull)):
            self._log_unavailable(request, exception)
            return unavailable_response(exception)
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

    def _skip(self, request: HttpRequest) -> SessionBase | None:
        session: SessionBase | None = getattr(request, "session", None)
        if session is None or getattr(session, "disabled", False):
            return None  # Off engine, or a Disabled view on Django's engines
        if isinstance(session, StateModeSessionBase) and session.access == DISABLED:
            return None
        return session

    def _plan(self, request: HttpRequest, response: HttpResponseBase) -> dict[str, Any]:
        session = request.session
        empty = session.is_empty()
        delete_cookie = settings.SESSION_COOKIE_NAME in request.COOKIES and empty
        save = (
            not delete_cookie
            and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)
            and not empty
            and response.status_code < 500  # Django: skip the save for 5xx responses
        )
        return {"accessed": session.accessed, "delete_cookie": delete_cookie, "save": save}

    def process_response(  # type: ignore[override]
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        session = self._skip(request)
        if session is None:
            return response
        try:
            if _refreshes_only(session):
                session.refresh()
            plan = self._plan(request, response)
            if isinstance(session, StateModeSessionBase):
                session.finish(plan["save"])
            elif plan["save"]:
                session.save()
        except (UpdateError, SessionStoreUnavailable, SessionQueueFull) as exc:
            return self._finish_failed(request, response, exc)
        return self._cookie(request, response, plan)

    async def aprocess_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        session = self._skip(request)
        if session is None:
            return response
        try:
            if _refreshes_only(session):
                await session.arefresh()
            plan = self._plan(request, response)
            if isinstance(session, StateModeSessionBase):
                await session.afinish(plan["save"])
            elif plan["save"]:
                await session.asave()
        except (UpdateError, SessionStoreUnavailable, SessionQueueFull) as exc:
            return self._finish_failed(request, response, exc)
        return self._cookie(request, response, plan)

    def _finish_failed(
        self, request: HttpRequest, response: HttpResponseBase, exc: Exception
    ) -> HttpResponseBase:
        """Answer for a final save or release that failed (sync and async alike)."""
        if isinstance(exc, UpdateError):
            # Django's rule: the session was deleted meanwhile (or, here, its lock broken).
            raise SessionInterrupted(INTERRUPTED) from None
        self._log_unavailable(request, exc)
        if response.status_code >= 500:
            return response  # already failing; the release could not be sent either
        return unavailable_response(exc)

    def _cookie(
        self, request: HttpRequest, response: HttpResponseBase, plan: dict[str, Any]
    ) -> HttpResponseBase:
        session = request.session
        need_vary_cookie = plan["accessed"]
        if plan["delete_cookie"]:
            response.delete_cookie(
                settings.SESSION_COOKIE_NAME,
                path=settings.SESSION_COOKIE_PATH,
                domain=settings.SESSION_COOKIE_DOMAIN,
                samesite=settings.SESSION_COOKIE_SAMESITE,
            )
            need_vary_cookie = True
        elif plan["save"]:
            if session.get_expire_at_browser_close():
                max_age = None
                expires = None
            else:
                max_age = session.get_expiry_age()
                expires = http_date(time.time() + max_age)
            self.set_session_cookie(request, response, session, max_age, expires)
            # With a session cookie set, it must be varied on (CVE-2026-35192).
            need_vary_cookie = True
        if need_vary_cookie:
            patch_vary_headers(response, ("Cookie",))
        return response

    def set_session_cookie(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        session: SessionBase,
        max_age: int | None,
        expires: str | None,
    ) -> None:
        """Send the session key to the client (a cookie; cookieless overrides)."""
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

    # Failures before a response exists: release without saving.

    def _abandon(self, request: HttpRequest) -> None:
        session = getattr(request, "session", None)
        if isinstance(session, StateModeSessionBase):
            try:
                session.finish(False)
            except Exception:
                logger.exception("Could not release the session lock after an error.")

    async def _aabandon(self, request: HttpRequest) -> None:
        session = getattr(request, "session", None)
        if isinstance(session, StateModeSessionBase):
            try:
                await session.afinish(False)
            except Exception:
                logger.exception("Could not release the session lock after an error.")
