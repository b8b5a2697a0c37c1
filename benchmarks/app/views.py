"""Views of the benchmark site."""

from __future__ import annotations

import functools
import secrets
import time
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from benchmarks import kvserver as kv
from benchmarks.cycle import serializer
from django_statemodes.decorators import session_readonly

#: The profile every benchmark session carries, ~1 KB of JSON with the counter.
PROFILE = {"bio": "x" * 900, "theme": "dark"}

#: ``SESSION_SERIALIZER``, built once per process: the floor pays for encoding, not imports.
codec = functools.cache(serializer)


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
        session["profile"] = PROFILE
    return JsonResponse({"counter": counter + 1})


def kv_increment(request: HttpRequest) -> JsonResponse:
    """No session framework: ``increment``'s work done by hand on the key-value floor server.

    Read the bytes under the cookie's key, decode them with ``SESSION_SERIALIZER``, add one,
    encode, write, set the cookie: the two round trips and the work any store outside the
    process must do for this request, and nothing else. Its rate over ``ping``'s is the most
    an engine of two round trips can reach on the machine (the HTTP rows' ceiling).
    """
    store = kv.client()
    key = request.COOKIES.get(settings.SESSION_COOKIE_NAME, "")
    raw = store.get(key.encode()) if key.isalnum() else None
    if raw is None:
        key = secrets.token_hex(16)
        data: dict[str, Any] = {"profile": PROFILE}
    else:
        data = codec().loads(raw)
    data["counter"] = data.get("counter", 0) + 1
    store.set(key.encode(), codec().dumps(data))
    response = JsonResponse({"counter": data["counter"]})
    response.set_cookie(settings.SESSION_COOKIE_NAME, key, max_age=settings.SESSION_COOKIE_AGE)
    return response


@session_readonly
def read(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"counter": request.session.get("counter", 0)})
