"""The "where you are signed in" page: this device, the others, end one or all of them.

Include ``django_statemodes.urls`` in a project's URLconf, or route to ``sessions_page``
directly; restyle by overriding the ``statemodes/sessions.html`` template. Needs
``STATEMODES_USER_INDEX`` and an engine whose store keeps the index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.shortcuts import render
from django.utils.crypto import constant_time_compare
from django.views.decorators.http import require_http_methods

from django_statemodes import sessions
from django_statemodes.items import SessionInfo

__all__ = ["Device", "describe_user_agent", "sessions_page"]

# (name shown, pattern) in the order a User-Agent is recognised: Edge and Opera say "Chrome"
# too, Chrome says "Safari" too.
_BROWSERS = (
    ("Edge", r"Edg(?:e|A|iOS)?/(\d+)"),
    ("Opera", r"OPR/(\d+)"),
    ("Firefox", r"(?:Firefox|FxiOS)/(\d+)"),
    ("Chrome", r"(?:Chrome|CriOS)/(\d+)"),
    ("Safari", r"Version/(\d+).*Safari/"),
)
_SYSTEMS = (
    ("Android", r"Android"),
    ("iOS", r"iPhone|iPad|iPod"),
    ("Windows", r"Windows"),
    ("macOS", r"Mac OS X|Macintosh"),
    ("ChromeOS", r"CrOS"),
    ("Linux", r"Linux"),
)


def describe_user_agent(user_agent: str | None) -> str:
    """A User-Agent as people name it: "Firefox 128 on Linux" (or "Unknown browser")."""
    if not user_agent:
        return "Unknown browser"
    browser = next(
        (f"{name} {m.group(1)}" for name, p in _BROWSERS if (m := re.search(p, user_agent))),
        None,
    )
    system = next((name for name, p in _SYSTEMS if re.search(p, user_agent)), None)
    if browser is None:
        browser = user_agent.split(" ", 1)[0][:40] or "Unknown browser"
    return f"{browser} on {system}" if system else browser


def _when(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True)
class Device:
    """One session as the template shows it."""

    reference: str
    browser: str
    ip: str | None
    created: datetime | None
    last_seen: datetime | None
    expires: datetime | None
    current: bool

    @classmethod
    def of(cls, info: SessionInfo, current_key: str | None) -> Device:
        return cls(
            reference=sessions.session_reference(info.session_key),
            browser=describe_user_agent(info.user_agent),
            ip=info.ip,
            created=_when(info.created),
            last_seen=_when(info.last_seen),
            expires=_when(info.expires),
            current=info.session_key == current_key,
        )


@login_required
@require_http_methods(["GET", "POST"])
def sessions_page(request: HttpRequest) -> HttpResponse:
    """List the user's sessions; POST ``end`` (one device's reference) or ``end_all``."""
    current = request.session.session_key
    infos = sessions.user_sessions(request.user)
    if request.method == "POST":
        if "end_all" in request.POST:
            sessions.end_user_sessions(request.user, keep=current)
            return HttpResponseRedirect(request.path)
        wanted = request.POST.get("end", "")
        for info in infos:
            if info.session_key != current and constant_time_compare(
                sessions.session_reference(info.session_key), wanted
            ):
                sessions.end_session(info.session_key)
                return HttpResponseRedirect(request.path)
        if not wanted:
            return HttpResponseBadRequest("Say which session to end.")
        return HttpResponseRedirect(request.path)  # already ended (another tab, expiry)
    devices = [Device.of(info, current) for info in infos]
    this = next((device for device in devices if device.current), None)
    others = [device for device in devices if not device.current]
    return render(
        request,
        "statemodes/sessions.html",
        {"this_device": this, "other_devices": others},
    )
