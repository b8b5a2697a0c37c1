"""Views of the benchmark site."""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from benchmarks import kvserver as kv
from benchmarks.cycle import serializer
from benchmarks.engines import FLOOR_SELECT, FLOOR_UPSERT, floor_connection
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


def _by_hand(
    request: HttpRequest, get: Callable[[str], bytes | None], put: Callable[[str, bytes], None]
) -> JsonResponse:
    """``increment``'s work without a session framework, on a store of bytes by key.

    Read the bytes under the cookie's key, decode them with ``SESSION_SERIALIZER``, add one,
    encode, write, set the cookie: the two round trips and the work any store outside the
    process must do for this request, and nothing else. Its rate over ``ping``'s is the most
    an engine of two round trips on that store can reach on the machine (an HTTP ceiling).
    """
    key = request.COOKIES.get(settings.SESSION_COOKIE_NAME, "")
    raw = get(key) if key.isalnum() else None
    if raw is None:
        key = secrets.token_hex(16)
        data: dict[str, Any] = {"profile": PROFILE}
    else:
        data = codec().loads(raw)
    data["counter"] = data.get("counter", 0) + 1
    put(key, codec().dumps(data))
    response = JsonResponse({"counter": data["counter"]})
    response.set_cookie(settings.SESSION_COOKIE_NAME, key, max_age=settings.SESSION_COOKIE_AGE)
    return response


def kv_increment(request: HttpRequest) -> JsonResponse:
    """By hand on the key-value floor server: the ceiling of any store outside the process."""
    store = kv.client()
    return _by_hand(request, lambda k: store.get(k.encode()), lambda k, v: store.set(k.encode(), v))


@functools.cache
def _redis() -> Any:
    import redis

    return redis.Redis.from_url(getattr(settings, "REDIS_URL"))  # noqa: B009


def redis_increment(request: HttpRequest) -> JsonResponse:
    """By hand with redis-py: GET, then SET with the session's lifetime as its TTL."""
    client = _redis()
    return _by_hand(
        request,
        lambda k: client.get(f"statemodes-bench:{k}"),
        lambda k, v: client.set(f"statemodes-bench:{k}", v, ex=settings.SESSION_COOKIE_AGE),
    )


#: One psycopg connection per process, as Django keeps one per thread.
_pg = functools.cache(floor_connection)


def pg_increment(request: HttpRequest) -> JsonResponse:
    """By hand with psycopg on a table of our tables' type: SELECT, then an upsert."""
    conn = _pg()

    def get(key: str) -> bytes | None:
        row = conn.execute(FLOOR_SELECT, (key,), prepare=True).fetchone()
        return None if row is None else bytes(row[0])

    return _by_hand(request, get, lambda k, v: conn.execute(FLOOR_UPSERT, (k, v), prepare=True))


@session_readonly
def read(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"counter": request.session.get("counter", 0)})
