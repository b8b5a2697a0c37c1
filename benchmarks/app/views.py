"""Views of the benchmark site."""

from __future__ import annotations

import time

from django.http import HttpRequest, JsonResponse

from django_statemodes.decorators import session_readonly


def ping(request: HttpRequest) -> JsonResponse:
    """No session: the HTTP floor, and the readiness probe."""
    return JsonResponse({"ok": True})


def increment(request: HttpRequest) -> JsonResponse:
    """Read the counter, work ``?work=`` ms (a view's own work), write the counter plus one.

    The read-modify-write that loses updates when two requests of a session overlap without a
    session lock.
    """
    session = request.session
    counter = session.get("counter", 0)
    work = float(request.GET.get("work", 0))
    if work:
        time.sleep(work / 1000)
    session["counter"] = counter + 1
    if "profile" not in session:  # ~1 KB, as in the cycle benchmark
        session["profile"] = {"bio": "x" * 900, "theme": "dark"}
    return JsonResponse({"counter": counter + 1})


@session_readonly
def read(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"counter": request.session.get("counter", 0)})
