"""The smallest views for middleware tests: sync and async, each mode."""

from __future__ import annotations

import time

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import View

from django_statemodes.decorators import session_disabled, session_readonly, session_state


def increment(request: HttpRequest) -> JsonResponse:
    value = request.session.get("counter", 0)
    # ?work=<ms>: the view's own work between reading and writing (a query, a template), the
    # window in which unlocked engines lose concurrent updates.
    time.sleep(int(request.GET.get("work", 0)) / 1000)
    request.session["counter"] = value + 1
    return JsonResponse({"counter": request.session["counter"]})


def read(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"counter": request.session.get("counter")})


@session_readonly
def read_only(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"counter": request.session.get("counter")})


@session_readonly
def read_only_untouched(request: HttpRequest) -> HttpResponse:
    return HttpResponse("not read")


@session_readonly
def read_only_write(request: HttpRequest) -> HttpResponse:
    request.session["counter"] = 0
    return HttpResponse("unreachable")


@session_disabled
def disabled(request: HttpRequest) -> HttpResponse:
    return HttpResponse("no session here")


def unmarked_disabled_twin(request: HttpRequest) -> HttpResponse:
    """``disabled`` without the decorator: the control case of the Disabled tests."""
    return HttpResponse("no session here")


@session_disabled
def disabled_touch(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(request.session.get("counter")))


@session_state("ReadWrite")
async def async_increment(request: HttpRequest) -> JsonResponse:
    value = await request.session.aget("counter", 0) + 1
    await request.session.aset("counter", value)
    return JsonResponse({"counter": value})


@session_readonly
async def async_read_only(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"counter": await request.session.aget("counter")})


class ReadOnlyView(View):
    session_state = "ReadOnly"

    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"counter": request.session.get("counter")})

    def post(self, request: HttpRequest) -> JsonResponse:
        request.session["counter"] = -1
        return JsonResponse({})


def server_error(request: HttpRequest) -> HttpResponse:
    request.session["counter"] = 999
    return HttpResponse("boom", status=500)


def raises(request: HttpRequest) -> HttpResponse:
    request.session["counter"] = 999
    raise RuntimeError("view failed")


def release_early(request: HttpRequest) -> JsonResponse:
    request.session["counter"] = request.session.get("counter", 0) + 1
    request.session.release()  # type: ignore[attr-defined]
    return JsonResponse({"released": True})
