"""Views of the ASGI test site: async ones on ``aget``/``aset``, sync twins, and traps.

Every JSON body names the worker process (``pid``), so a test can tell uvicorn's workers apart.
"""

from __future__ import annotations

import asyncio
import os
import time
from importlib import import_module
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.decorators import session_disabled, session_readonly

# The hold view's longest wait for its release flag: a test that never writes the flag (or
# dies) frees the session after this, not after the lock timeout.
HOLD_LIMIT = 60.0


def _work(request: HttpRequest) -> float:
    """The view's own work in seconds, from ``?work=`` milliseconds (bounded to 1 s)."""
    return min(float(request.GET.get("work", 0)), 1000.0) / 1000


def _counted(counter: int) -> JsonResponse:
    return JsonResponse({"counter": counter, "pid": os.getpid()})


@session_disabled
def ping(request: HttpRequest) -> JsonResponse:
    """No session: the readiness probe."""
    return JsonResponse({"pid": os.getpid()})


async def aincrement(request: HttpRequest) -> JsonResponse:
    """Read the counter, work, write it plus one, through Django's async session API."""
    counter = await request.session.aget("counter", 0)
    if work := _work(request):
        await asyncio.sleep(work)
    await request.session.aset("counter", counter + 1)
    return _counted(counter + 1)


def increment(request: HttpRequest) -> JsonResponse:
    """``aincrement``'s sync twin: under ASGI Django runs it in a thread."""
    counter = request.session.get("counter", 0)
    if work := _work(request):
        time.sleep(work)
    request.session["counter"] = counter + 1
    return _counted(counter + 1)


@session_readonly
async def read(request: HttpRequest) -> JsonResponse:
    return _counted(await request.session.aget("counter", 0))


async def sync_in_async(request: HttpRequest) -> JsonResponse:
    """The mistake under test: the blocking session API inside ``async def``.

    A lock wait here would freeze the worker's event loop; it must fail at once instead, with
    SessionStateSyncInAsync naming ``aget``/``aset`` (Django's SynchronousOnlyOperation).
    """
    counter = request.session.get("counter", 0)
    request.session["counter"] = counter + 1
    return _counted(counter + 1)


def _flag(name: str) -> Path:
    return Path(os.environ["STATEMODES_ASGI_FLAGS"]) / name


async def hold(request: HttpRequest) -> HttpResponse:
    """Lock the session, say so (``held-<name>``), keep the lock until ``release-<name>`` exists.

    The lock is taken by the first ``aget`` (ReadWrite). Bounded by ``HOLD_LIMIT``.
    """
    name = request.GET.get("name", "")
    if not name.isalnum():
        return HttpResponseBadRequest("name: letters and digits")
    counter = await request.session.aget("counter", 0)
    _flag(f"held-{name}").touch()
    deadline = time.monotonic() + HOLD_LIMIT
    while not _flag(f"release-{name}").exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await request.session.aset("counter", counter + 1)
    return _counted(counter + 1)


@session_disabled
async def peek(request: HttpRequest) -> JsonResponse:
    """Read ``?key=``'s item straight from the provider (``get`` never locks): is it locked?"""
    engine: type[StateModeSessionBase] = import_module(settings.SESSION_ENGINE).SessionStore
    item = await engine.get_provider().aget(request.GET["key"])
    if item is None:
        return JsonResponse({"exists": False, "locked": False, "pid": os.getpid()})
    return JsonResponse({"exists": True, "locked": item.locked, "pid": os.getpid()})
