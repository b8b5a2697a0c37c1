"""The index of sessions by user, on the session core's side (``STATEMODES_USER_INDEX``).

The store keeps the index (``SessionStateProvider.bind_user`` and the rest); this module and the
receivers in ``django_statemodes.sessions`` decide what goes into it and when:

- Django's ``user_logged_in`` marks the request's session; the core binds it right after the
  session is stored (the record must exist), in the same op chain as the save.
- A key cycled while signed in (``update_session_auth_hash``) is bound again under its new key.
- A signed-in session's ``last_seen`` is written at most once per
  ``STATEMODES_USER_INDEX_INTERVAL`` per process, at the request's end.
- With ``STATEMODES_SIGN_OUT_EVERYWHERE_ON_PASSWORD_CHANGE``, a saved password change ends
  every other session of that user.

Logout and expiry need nothing here: removing a session removes its entry (the providers' job).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from contextvars import ContextVar
from typing import Any

from django.core.signals import setting_changed

from django_statemodes.conf import conf

__all__ = [
    "AUTH_SESSION_KEY",
    "ON",
    "client_of",
    "current_session",
    "index_on",
    "seen",
    "touch_due",
]

logger = logging.getLogger("django_statemodes")

#: django.contrib.auth.SESSION_KEY, spelled out: importing django.contrib.auth here would load
#: its machinery in every process, auth installed or not.
AUTH_SESSION_KEY = "_auth_user_id"

#: How much of a User-Agent is kept: enough to name any real browser.
USER_AGENT_LENGTH = 512

#: Bound of ``_seen``: past it the memory of recent touches is dropped (each session is then
#: touched once more, early): a dict of every live session's key would be the index again.
SEEN_LIMIT = 100_000

#: The session key this context's request loaded, kept by "sign out everywhere" on a password
#: change made in that request. Set only while the index is on.
current_session: ContextVar[str | None] = ContextVar("statemodes_current_session", default=None)

# Session key -> time.monotonic() of its last bind or touch by this process.
_seen: dict[str, float] = {}
#: STATEMODES_USER_INDEX, read once (None until then) and again after each setting change: the
#: session core tests it on every request, so with the index off a request pays one comparison.
ON: bool | None = None
#: STATEMODES_USER_INDEX_INTERVAL, read with ON.
INTERVAL: float = 300.0


def index_on() -> bool:
    """Whether ``STATEMODES_USER_INDEX`` is on (read once, then on every setting change)."""
    global ON, INTERVAL
    if ON is None:
        INTERVAL = float(conf.STATEMODES_USER_INDEX_INTERVAL)
        ON = bool(conf.STATEMODES_USER_INDEX)
    return ON


def _reset(*, setting: str, **kwargs: Any) -> None:
    global ON
    if setting.startswith("STATEMODES_USER_INDEX"):
        ON = None
        _seen.clear()


setting_changed.connect(_reset, dispatch_uid="django_statemodes.core.users")


def seen(session_key: str) -> None:
    """Record that ``session_key``'s entry was just written (bound or touched) by this process."""
    if len(_seen) >= SEEN_LIMIT:
        _seen.clear()
    _seen[session_key] = time.monotonic()


def touch_due(session_key: str, _monotonic: Any = time.monotonic) -> bool:
    """Whether ``last_seen`` of ``session_key`` is due; if so, record the touch as made."""
    now = _monotonic()  # a default argument: a local, not two lookups, on every request
    last = _seen.get(session_key)
    if last is not None and now - last < INTERVAL:
        return False
    if len(_seen) >= SEEN_LIMIT:
        _seen.clear()
    _seen[session_key] = now
    return True


def truncate_ip(address: str, how: str) -> str | None:
    """``address`` as ``STATEMODES_USER_INDEX_IP`` keeps it: whole, its network, or None."""
    if how == "off" or not address:
        return None
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None  # not an address (a misconfigured proxy header): store nothing
    if how == "full":
        return str(ip)
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


def client_of(request: Any) -> tuple[str | None, str | None]:
    """The IP address and User-Agent of ``request`` as the settings allow them to be stored."""
    meta = getattr(request, "META", {})
    ip = truncate_ip(str(meta.get("REMOTE_ADDR") or ""), conf.STATEMODES_USER_INDEX_IP)
    agent = None
    if conf.STATEMODES_USER_INDEX_USER_AGENT:
        agent = str(meta.get("HTTP_USER_AGENT") or "")[:USER_AGENT_LENGTH] or None
    return ip, agent
