"""Pure helpers for cookieless URLs: parse, strip and insert ASP.NET's ``/(S(<key>))/`` segment.

The format is ASP.NET's (CookielessHelper.cs): one path segment right after the application's
path, ``(`` + one or more ``X(value)`` tokens + ``)``, e.g. ``/(S(<key>)X(1))/rest``. We use two
letters: ``S`` (the session key) and ``X`` (``X(1)``: AutoDetect found no cookie support).

Nothing here touches a request, settings or a store: strings in, strings out. The Django side
lives in ``cookieless_handler.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.contrib.sessions.backends.base import VALID_KEY_CHARS
from django.utils.encoding import escape_uri_path
from django.utils.http import escape_leading_slashes

from django_statemodes.exceptions import MalformedSegment

__all__ = [
    "KEY_ALPHABET",
    "KEY_LENGTH",
    "PROBE",
    "Decision",
    "Segment",
    "autodetect",
    "format_segment",
    "insert_segment",
    "is_valid_key",
    "parse_segment",
    "rewrite_location",
    "same_site",
    "split_path",
    "url_path",
    "user_agent_digest",
    "with_probe",
    "without_probe",
]

#: Django's session keys (``VALID_KEY_CHARS``, 32 characters).
KEY_ALPHABET = frozenset(VALID_KEY_CHARS)
KEY_LENGTH = 32

#: ASP.NET's AutoDetect probe: the query parameter and the cookie of the same name.
PROBE = "AspxAutoDetectCookieSupport"

# ASP.NET IsValidHeader: "([A-Z]\([^/)]*\))+" inside one pair of parentheses. "(" is refused in
# values too, so that a token's end is never ambiguous.
_GRAMMAR = re.compile(r"\((?:[A-Z]\([^/()]*\))+\)")
_TOKEN = re.compile(r"([A-Z])\(([^/()]*)\)")


@dataclass(frozen=True, slots=True)
class Segment:
    """The values of one ``(...)`` segment."""

    #: The ``S`` value when it is a well-formed session key.
    session_key: str | None = None
    #: ``X(1)``: AutoDetect decided this client keeps no cookies.
    detected: bool = False
    #: An ``S`` value was there but is not a session key (ignored, as ASP.NET ignores it).
    bad_key: bool = False

    def text(self) -> str:
        """Return the segment as it appears in a URL (``""`` when there is nothing to carry)."""
        return format_segment(self.session_key, self.detected)


def is_valid_key(key: str) -> bool:
    """Return True for a Django session key: 32 characters of ``[a-z0-9]``."""
    return len(key) == KEY_LENGTH and KEY_ALPHABET.issuperset(key)


def format_segment(session_key: str | None, detected: bool = False) -> str:
    """Return ``(S(key)X(1))``, ``(S(key))``, ``(X(1))`` or ``""``."""
    tokens = ""
    if session_key is not None:
        if not is_valid_key(session_key):
            raise ValueError(f"not a session key: {session_key!r}")
        tokens += f"S({session_key})"
    if detected:
        tokens += "X(1)"
    return f"({tokens})" if tokens else ""


def parse_segment(text: str) -> Segment | None:
    """Parse ``(S(key)X(1))``; None if ``text`` is not in ASP.NET's grammar at all.

    Raises ``MalformedSegment`` for a grammatical segment with a repeated or unknown letter
    or an ``X`` value other than 1. An ``S`` value that is not a session key (wrong length,
    characters outside ``[a-z0-9]``) is not an error: it is ignored, as ASP.NET ignores an id
    that fails validation, and a fresh session is issued in its place.
    """
    if not _GRAMMAR.fullmatch(text):
        return None
    values: dict[str, str] = {}
    for letter, value in _TOKEN.findall(text):
        if letter in values:
            raise MalformedSegment(f"the cookieless segment has several {letter}(...) tokens")
        values[letter] = value
    unknown = sorted(set(values) - {"S", "X"})
    if unknown:
        raise MalformedSegment(f"the cookieless segment has an unknown token {unknown[0]}(...)")
    detected = "X" in values
    if detected and values["X"] != "1":
        raise MalformedSegment("the cookieless segment's X(...) token is not X(1)")
    key = values.get("S")
    if key is None:
        return Segment(detected=detected)
    if is_valid_key(key):
        return Segment(session_key=key, detected=detected)
    return Segment(detected=detected, bad_key=True)


def split_path(path: str) -> tuple[Segment | None, str]:
    """Split ``/(S(key))/rest`` into its segment and ``/rest``.

    ``path`` is relative to the application (Django's ``path_info``), so the segment can only
    be its first segment. A path whose first segment is not in the grammar is returned
    unchanged with no segment: it is an ordinary URL for the resolver. Raises
    ``MalformedSegment`` (see ``parse_segment``).
    """
    if not path.startswith("/("):  # the fast path of every request (ASP.NET: no "(" at all)
        return None, path
    end = path.find("/", 1)
    if end == -1:
        end = len(path)
    segment = parse_segment(path[1:end])
    if segment is None:
        return None, path
    return segment, path[end:] or "/"


def insert_segment(path: str, segment: str, base: str = "/") -> str:
    """Put ``segment`` right after ``base`` (the script prefix) in ``path``.

    Any segment already there is replaced; ``segment=""`` only removes it. Paths outside
    ``base`` are returned unchanged: they are not this application's (ASP.NET's
    ApplyAppPathModifier leaves them alone too).
    """
    if not base.endswith("/"):
        base += "/"
    if not path.startswith(base):
        if path + "/" != base:
            return path
        path = base
    rest = path[len(base) - 1 :]
    try:
        _, rest = split_path(rest)
    except MalformedSegment:
        pass  # not ours to repair: keep the path as it was, only add ours in front
    if not segment:
        return base[:-1] + rest
    return f"{base}{segment}{rest}"


def url_path(path: str) -> str:
    """Return a decoded path (Django's ``request.path``, ``path_info``) as a URL path.

    Percent-encoded as Django's ``request.get_full_path()`` encodes it (``escape_uri_path``): a
    ``?``, ``#`` or ``%`` of the path stays part of the path, and a ``\\`` becomes ``%5C``. A path
    without its leading ``/`` (a server may pass an absolute-form request-target such as
    ``https://evil.example/`` as PATH_INFO) gets one, so it can never be read as a URL with a
    scheme.
    """
    if not path.startswith("/"):
        path = "/" + path
    return escape_uri_path(path)


def same_site(url: str) -> str:
    """Return a root-relative ``url`` that no browser can read as another host.

    ``//host/`` is protocol-relative and browsers read ``/\\host/`` the same way (WHATWG URL: a
    backslash is a slash in http(s) URLs). Django's ``CommonMiddleware`` escapes the leading
    slashes of its own redirects for this reason (``escape_leading_slashes``, CVE-2018-14574):
    ``//host/`` becomes ``/%2Fhost/``, which Django decodes back to the same ``path_info``, so the
    redirect reaches the same view on this site.
    """
    return escape_leading_slashes(url.replace("\\", "%5C"))


def rewrite_location(location: str, segment: str, *, base: str, scheme: str, host: str) -> str:
    """Return a redirect target carrying ``segment`` if it points into this application.

    Root-relative paths under ``base`` and absolute URLs to ``scheme://host`` under ``base``
    are rewritten (ASP.NET's Response.Redirect applies the app path modifier the same way).
    Relative paths keep the segment by themselves (the browser resolves them against the
    current URL), and other sites' URLs are never touched.
    """
    parts = urlsplit(location)
    if parts.scheme or parts.netloc:
        if parts.scheme not in ("", scheme) or parts.netloc.lower() != host.lower():
            return location
    elif not parts.path.startswith("/"):
        return location
    path = insert_segment(parts.path, segment, base)
    if path == parts.path:
        return location
    if not parts.netloc:
        # Removing the segment from "/(S(key))//host/" must not leave "//host/" behind.
        path = same_site(path)
    return urlunsplit(parts._replace(path=path))


def without_probe(query: str) -> str:
    """Return the query string without ASP.NET's ``AspxAutoDetectCookieSupport`` parameter."""
    if PROBE not in query:
        return query
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != PROBE]
    return urlencode(pairs)


def with_probe(query: str) -> str:
    """Return the query string with ``AspxAutoDetectCookieSupport=1`` added."""
    probe = f"{PROBE}=1"
    query = without_probe(query)
    return f"{query}&{probe}" if query else probe


Decision = Literal["cookieless", "cookies", "probe", "probe-passed"]


def autodetect(
    *,
    detected: bool,
    session_cookie: bool,
    has_cookies: bool,
    probe_in_query: bool,
    probe_cookie: bool,
    safe_method: bool,
) -> Decision:
    """Decide a request's mode under AutoDetect, in ASP.NET's order but for the session cookie.

    0. The session cookie: cookies, whatever the URL says. ASP.NET checks ``X(1)`` first, so a
    link carrying ``(S(key)X(1))`` moves a browser that has a cookie session into the link's
    session (fixation); a browser that proves a session by cookie keeps it. 1. ``X(1)`` in the
    URL: cookieless. 2. Any cookie: cookies, without a probe (and if the
    probe has just come back with its cookie, ``probe-passed``: one redirect to the URL without
    the probe parameter, so that cookie users' URLs stay clean). 3. The probe parameter
    without its cookie: cookieless (the caller adds ``X(1)``). 4. Otherwise ``probe``: set the
    probe cookie and redirect to the URL with the probe parameter. Only GET and HEAD are
    probed: a redirect would turn another method into a GET and lose its body.
    """
    if detected and not session_cookie:
        return "cookieless"
    if has_cookies or session_cookie:
        if probe_in_query and probe_cookie and safe_method:
            return "probe-passed"
        return "cookies"
    if probe_in_query:
        return "cookieless"
    return "probe" if safe_method else "cookies"


def user_agent_digest(secret: str, user_agent: str) -> str:
    """Return the HMAC that binds a cookieless session to a User-Agent."""
    message = b"django_statemodes.cookieless.user-agent\x00" + user_agent.encode(
        "utf-8", "surrogatepass"
    )
    return hmac.new(secret.encode("utf-8", "surrogatepass"), message, hashlib.sha256).hexdigest()
