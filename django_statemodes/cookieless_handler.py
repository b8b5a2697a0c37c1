"""Cookieless sessions (``STATEMODES_COOKIELESS`` = ``UseUri`` | ``AutoDetect``) for the middleware.

What ASP.NET's SessionStateModule and CookielessHelper do, on Django's request cycle:

- the ``/(S(<key>))/`` segment is cut from ``path_info`` (and ``path``) before URL resolution,
  and put into the script prefix for the request, so ``reverse()``, ``{% url %}`` and
  ``redirect()`` keep it; app-relative ``Location`` headers are rewritten to carry the key the
  session has when the response leaves (after a login's ``cycle_key``, the new one);
- a session stored under a new key is answered with a 302 to the URL carrying it; an unknown,
  expired or malformed key is never adopted and never stored: a 302 to the URL without it
  (``STATEMODES_REGENERATE_EXPIRED_SESSION_ID``), and a key only with the first write, as with
  cookies (Django's rule since CVE-2015-5143; ASP.NET would store a placeholder item under a fresh
  key, which an attacker can fetch and plant in a victim's link);
- AutoDetect probes once with a cookie and ``?AspxAutoDetectCookieSupport=1``; the session
  cookie wins over ``X(1)`` in the URL;
- every redirect made here goes to this site only (``same_site``, then Django's
  ``url_has_allowed_host_and_scheme``): a request for ``//evil.example/`` is never sent there;
- ``Referrer-Policy``, optional ``X-Robots-Tag: noindex``, optional binding of the key to the
  User-Agent.

``UriTransport`` is the middleware's key transport when the setting asks for it; with
``UseCookies`` none exists and requests never reach this module. It knows the middleware only
through the calls the middleware makes on it (``middleware.KeyTransport``), and the cookie side it
falls back to only through ``CookieFallback``: this module does not import the middleware.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, cast

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponseBadRequest, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.urls import get_script_prefix, set_script_prefix
from django.utils.encoding import escape_uri_path
from django.utils.http import url_has_allowed_host_and_scheme

from django_statemodes.conf import conf
from django_statemodes.cookieless import (
    PROBE,
    autodetect,
    format_segment,
    insert_segment,
    rewrite_location,
    same_site,
    split_path,
    url_path,
    user_agent_digest,
    with_probe,
    without_probe,
)
from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.exceptions import MalformedSegment
from django_statemodes.modes import READ_ONLY

__all__ = [
    "SAFE_METHODS",
    "USER_AGENT_KEY",
    "AsyncRespond",
    "CookieFallback",
    "Respond",
    "UriTransport",
    "UrlState",
    "malformed_response",
    "url_state",
]

security_logger = logging.getLogger("django.security.django_statemodes")

#: The session key under which the User-Agent binding is stored.
USER_AGENT_KEY = "_statemodes_user_agent"
#: Methods that may be redirected to themselves (a 302 turns others into a GET).
SAFE_METHODS = ("GET", "HEAD")

#: The middleware's request cycle, which a transport runs (``wrap``) or answers in place of.
Respond = Callable[[HttpRequest], HttpResponseBase]
AsyncRespond = Callable[[HttpRequest], Awaitable[HttpResponseBase]]

#: What ``UriTransport._cycle`` asks its driver (``wrap`` or ``awrap``) to do, and for which key:
#: run the middleware's cycle, or read the User-Agent binding stored with a key (its answer: the
#: binding or None).
Need = tuple[str, str]
RESPOND = "respond"
STORED_USER_AGENT = "stored user agent"


@dataclass(slots=True)
class UrlState:
    """Where a cookieless request's session key came from, and how to send one back."""

    #: The request's script prefix (ending in "/"), before the segment was added to it.
    base: str
    #: ``path_info`` without the segment.
    path: str
    #: The query string without AutoDetect's probe parameter.
    query: str
    #: The URL's session key, if well formed.
    key: str | None
    #: Carry ``X(1)`` (AutoDetect decided this client keeps no cookies).
    detected: bool
    #: The URL had an ``S`` value that is not a session key.
    bad_key: bool = False

    def segment(self, key: str | None) -> str:
        return format_segment(key, self.detected)

    def url(self, key: str | None) -> str:
        """Return the request's own URL (path and query) carrying ``key``, on this site only.

        Without a segment, a request for ``//evil.example/`` would be sent to ``//evil.example/``:
        ``same_site`` escapes the leading slashes (see ``cookieless.same_site``).
        """
        base = escape_uri_path(self.base)
        path = insert_segment(url_path(self.base[:-1] + self.path), self.segment(key), base)
        path = same_site(path)
        return f"{path}?{self.query}" if self.query else path


def url_state(request: HttpRequest) -> UrlState | None:
    """Return a cookieless request's ``UrlState`` (None: the request uses cookies)."""
    state: UrlState | None = getattr(request, "statemodes_cookieless", None)
    return state


def malformed_response(exc: MalformedSegment) -> HttpResponseBadRequest:
    return HttpResponseBadRequest(
        f"<!doctype html><title>400 Bad Request</title><h1>Bad Request</h1><p>{exc}.</p>"
    )


class CookieFallback(Protocol):
    """The cookie transport a cookie request under AutoDetect uses (the middleware's)."""

    def session_key(self, request: HttpRequest) -> str | None: ...

    def send_key(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        session: SessionBase,
        max_age: int | None,
        expires: str | None,
    ) -> None: ...


class UriTransport:
    """The session key in the URL: the middleware's key transport in cookieless mode."""

    def __init__(self, store: type[SessionBase], cookies: CookieFallback) -> None:
        self.SessionStore = store
        self.cookies = cookies
        self.auto_detect = conf.STATEMODES_COOKIELESS == "AutoDetect"
        self.regenerate = bool(conf.STATEMODES_REGENERATE_EXPIRED_SESSION_ID)
        self.referrer_policy = conf.STATEMODES_COOKIELESS_REFERRER_POLICY
        self.noindex = bool(conf.STATEMODES_COOKIELESS_NOINDEX)
        self.bind_user_agent = bool(conf.STATEMODES_COOKIELESS_BIND_USER_AGENT)

    # What the middleware asks of its key transport.

    def session_key(self, request: HttpRequest) -> str | None:
        """Return the URL's key for a cookieless request, else the cookie's."""
        state = url_state(request)
        if state is not None:
            return state.key
        return self.cookies.session_key(request)

    def send_key(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        session: SessionBase,
        max_age: int | None,
        expires: str | None,
    ) -> None:
        """Set the cookie for a cookie request (AutoDetect); a URL's key goes out in ``finish()``."""
        if url_state(request) is None:
            self.cookies.send_key(request, response, session, max_age, expires)

    def before_save(self, request: HttpRequest) -> None:
        # After the view and the inner middleware, before the save: the binding is stored with
        # the session's first write.
        if self.bind_user_agent:
            self._bind(request)

    # The request cycle.

    def wrap(self, request: HttpRequest, respond: Respond) -> HttpResponseBase:
        """Cut the URL's segment, run ``respond`` with the key in the script prefix, send it back."""
        steps = self._cycle(request)
        try:
            need = next(steps)
            while True:
                what, key = need
                try:
                    if what == RESPOND:
                        result: Any = respond(request)
                    else:
                        result = self._peek(key).get(USER_AGENT_KEY)
                except BaseException as exc:
                    need = steps.throw(exc)  # the cycle's ``finally`` restores the prefix
                else:
                    need = steps.send(result)
        except StopIteration as stop:
            return cast(HttpResponseBase, stop.value)

    async def awrap(self, request: HttpRequest, respond: AsyncRespond) -> HttpResponseBase:
        steps = self._cycle(request)
        try:
            need = next(steps)
            while True:
                what, key = need
                try:
                    if what == RESPOND:
                        result: Any = await respond(request)
                    else:
                        result = await self._peek(key).aget(USER_AGENT_KEY)
                except BaseException as exc:
                    need = steps.throw(exc)
                else:
                    need = steps.send(result)
        except StopIteration as stop:
            return cast(HttpResponseBase, stop.value)

    def _cycle(self, request: HttpRequest) -> Generator[Need, Any, HttpResponseBase]:
        """The request cycle, once for both paths: yields what ``wrap``/``awrap`` must do."""
        begun = self.begin(request)
        if begun is None:  # a cookie request (AutoDetect)
            answer: HttpResponseBase = yield RESPOND, ""
            return answer
        if not isinstance(begun, UrlState):
            return begun  # answered at once: a 400, or AutoDetect's probe
        if self.bind_user_agent and begun.key is not None:
            stored = yield STORED_USER_AGENT, begun.key
            if not self._matches(request, stored):
                # Someone else's key: drop it from the URL. No fresh key is stored for the
                # refused client: it gets one with its first write, like anyone.
                return self._headers(self._redirect(request, begun.url(None)))
        previous = self._enter(begun)
        try:
            response = yield RESPOND, ""
        finally:
            set_script_prefix(previous)
        return self.finish(request, response, begun)

    def begin(self, request: HttpRequest) -> HttpResponseBase | UrlState | None:
        """Cut the URL's segment and decide the request's mode.

        Return a response to send at once (400 for a malformed segment, AutoDetect's probe),
        the ``UrlState`` of a cookieless request, or None for a request that uses cookies.
        """
        try:
            segment, path_info = split_path(request.path_info)
        except MalformedSegment as exc:
            return self._headers(malformed_response(exc))
        if segment is not None:
            # ASP.NET RewritePath: the application never sees the segment.
            request.path = request.path[: len(request.path) - len(request.path_info)] + path_info
            request.path_info = path_info
        query = request.META.get("QUERY_STRING", "")
        if self.auto_detect:
            decision = autodetect(
                detected=segment is not None and segment.detected,
                # A session the browser proves by cookie is never replaced by a link's X(1).
                session_cookie=settings.SESSION_COOKIE_NAME in request.COOKIES,
                has_cookies=bool(request.COOKIES),
                probe_in_query=PROBE in request.GET,
                probe_cookie=PROBE in request.COOKIES,
                safe_method=request.method in SAFE_METHODS,
            )
            if decision == "cookies":
                return None
            if decision == "probe":
                return self._probe(request, query)
            if decision == "probe-passed":
                clean = without_probe(query)
                path = same_site(url_path(request.path))
                return self._redirect(request, f"{path}?{clean}" if clean else path)
        state = UrlState(
            base=get_script_prefix(),
            path=path_info,
            query=without_probe(query),
            key=segment.session_key if segment is not None else None,
            detected=self.auto_detect,
            bad_key=segment is not None and segment.bad_key,
        )
        request.statemodes_cookieless = state  # type: ignore[attr-defined]
        return state

    def _enter(self, state: UrlState) -> str:
        """Put the segment into the script prefix; return the prefix to restore."""
        previous = get_script_prefix()
        segment = state.segment(state.key)
        if segment:
            # Django caches relative STATIC_URL/MEDIA_URL with the script prefix of their
            # first use: resolve them now, before the prefix carries a session key.
            settings.STATIC_URL  # noqa: B018
            settings.MEDIA_URL  # noqa: B018
            set_script_prefix(f"{state.base}{segment}/")
        return previous

    def finish(
        self, request: HttpRequest, response: HttpResponseBase, state: UrlState
    ) -> HttpResponseBase:
        """Send the session's key back in the URL (redirects), and the safety headers."""
        if self._drops_unknown_key(request, response, state):
            # ASP.NET's regenerateExpiredSessionId, without its stored placeholder: the URL
            # loses the key the store does not hold, and nothing is stored until a write.
            return self._headers(self._redirect(request, state.url(None)))
        key = self._final_key(request, state)
        if response.has_header("Location") and 300 <= response.status_code < 400:
            location = response["Location"]
            rewritten = self._location(request, location, state, key)
            if rewritten != location:
                if not self._on_site(request, rewritten):
                    return self._headers(self._refused_redirect())
                response["Location"] = rewritten
        elif key is not None and key != state.key and request.method in SAFE_METHODS:
            # ASP.NET SaveSessionID: a new cookieless session costs a 302 to its URL.
            response = self._redirect(request, state.url(key))
        return self._headers(response)

    def _final_key(self, request: HttpRequest, state: UrlState) -> str | None:
        session: SessionBase | None = getattr(request, "session", None)
        if session is None or getattr(session, "disabled", False):
            return state.key
        return session.session_key

    def _drops_unknown_key(
        self, request: HttpRequest, response: HttpResponseBase, state: UrlState
    ) -> bool:
        """True if the URL's key turned out unknown, expired or malformed and must leave the URL.

        The key is known to be unknown only once the session was loaded (Django's sessions are
        lazy); a session that was changed (flushed, say) is left alone here, which also keeps a
        view that always flushes from redirecting forever.
        """
        if not self.regenerate or request.method not in SAFE_METHODS:
            return False
        if state.key is None and not state.bad_key:
            return False
        if response.has_header("Location"):
            return False
        session: SessionBase | None = getattr(request, "session", None)
        if session is None or getattr(session, "disabled", False):
            return False
        return session.accessed and not session.modified and session.session_key is None

    # Redirects made here: to this site only.

    def _on_site(self, request: HttpRequest, url: str) -> bool:
        """Django's test for redirect targets (``url_has_allowed_host_and_scheme``)."""
        try:
            hosts = {request.get_host()}
        except DisallowedHost:
            hosts = set()  # root-relative targets only
        return url_has_allowed_host_and_scheme(url, allowed_hosts=hosts)

    def _redirect(self, request: HttpRequest, url: str) -> HttpResponseBase:
        """A 302 to ``url`` built from the request's own path, or a 400 if it would leave the site.

        ``url`` went through ``same_site`` already; the check is Django's second line, as
        ``LoginView`` checks its ``next``: a path no escaping made safe is refused, never followed.
        """
        if not self._on_site(request, url):
            return self._refused_redirect()
        return HttpResponseRedirect(url)

    def _refused_redirect(self) -> HttpResponseBase:
        security_logger.warning("Cookieless redirect off the site refused.")
        return HttpResponseBadRequest(
            "<!doctype html><title>400 Bad Request</title><h1>Bad Request</h1>"
        )

    def _location(
        self, request: HttpRequest, location: str, state: UrlState, key: str | None
    ) -> str:
        try:
            host = request.get_host()
        except DisallowedHost:
            host = ""  # absolute URLs are then left alone
        return rewrite_location(
            location, state.segment(key), base=state.base, scheme=request.scheme or "", host=host
        )

    def _headers(self, response: HttpResponseBase) -> HttpResponseBase:
        # A URL with a session key must not leak through Referer to other sites, nor be
        # indexed (ASP.NET's known weaknesses of cookieless mode).
        if self.referrer_policy:
            response["Referrer-Policy"] = self.referrer_policy
        if self.noindex:
            response["X-Robots-Tag"] = "noindex"
        return response

    def _probe(self, request: HttpRequest, query: str) -> HttpResponseBase:
        """ASP.NET's AutoDetect probe: a cookie, and a 302 to the URL with the probe parameter."""
        response = self._redirect(
            request, f"{same_site(url_path(request.path))}?{with_probe(query)}"
        )
        if response.status_code != 302:
            return response
        response.set_cookie(
            PROBE,
            "1",
            path=settings.SESSION_COOKIE_PATH,
            domain=settings.SESSION_COOKIE_DOMAIN,
            secure=settings.SESSION_COOKIE_SECURE,
            httponly=True,
            samesite=settings.SESSION_COOKIE_SAMESITE,
        )
        return response

    # User-Agent binding (STATEMODES_COOKIELESS_BIND_USER_AGENT).

    def _digest(self, request: HttpRequest) -> str:
        return user_agent_digest(settings.SECRET_KEY, request.META.get("HTTP_USER_AGENT", ""))

    def _peek(self, key: str) -> SessionBase:
        if issubclass(self.SessionStore, StateModeSessionBase):
            return self.SessionStore(key, access=READ_ONLY)  # no lock, no wait
        return self.SessionStore(key)

    def _matches(self, request: HttpRequest, stored: Any) -> bool:
        if stored is None or hmac.compare_digest(str(stored), self._digest(request)):
            return True
        # Someone else's URL (shared link, log, Referer): refuse it and drop the key from the
        # URL, leaving the owner's session untouched.
        security_logger.warning(
            "Cookieless session key used by another User-Agent on %s; dropping it from the URL.",
            request.path,
        )
        return False

    def _bind(self, request: HttpRequest) -> None:
        if url_state(request) is None:
            return
        session: SessionBase | None = getattr(request, "session", None)
        if session is None or not session.modified or getattr(session, "released", False):
            return
        if session.is_empty():
            return  # flushed: nothing to bind, and nothing will be saved
        digest = self._digest(request)
        if session.get(USER_AGENT_KEY) != digest:
            session[USER_AGENT_KEY] = digest
