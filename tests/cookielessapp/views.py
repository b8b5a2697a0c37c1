"""Views of the cookieless test site."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.urls import get_script_prefix, reverse
from django.utils.encoding import escape_uri_path

from django_statemodes.decorators import session_disabled


def count_view(request: HttpRequest) -> int:
    request.session["views"] = request.session.get("views", 0) + 1
    return int(request.session["views"])


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "cookielessapp/home.html", {"views": count_view(request)})


def page(request: HttpRequest, number: int) -> HttpResponse:
    return render(
        request, "cookielessapp/page.html", {"number": number, "views": count_view(request)}
    )


def go(request: HttpRequest, number: int) -> HttpResponse:
    """A redirect made by redirect() with a view name: reverse() keeps the segment."""
    return redirect("page", number)


def hand_written(request: HttpRequest) -> HttpResponse:
    """A root-relative Location written by hand: the middleware adds the segment."""
    return HttpResponseRedirect("/page/7/?from=hand")


def elsewhere(request: HttpRequest) -> HttpResponse:
    return HttpResponseRedirect("https://example.com/page/1/")


def absolute(request: HttpRequest) -> HttpResponse:
    return HttpResponseRedirect(request.build_absolute_uri("/page/8/"))


def state(request: HttpRequest) -> JsonResponse:
    """What the server sees: the session key, the path, reverse() and a static URL."""
    return JsonResponse(
        {
            "session_key": request.session.session_key,
            "views": request.session.get("views"),
            "user": request.user.get_username() if request.user.is_authenticated else None,
            "path": request.path,
            "path_info": request.path_info,
            "reverse": reverse("page", args=[3]),
            "static": static("x.css"),
        }
    )


def touch(request: HttpRequest) -> JsonResponse:
    """Read the session without changing it."""
    return JsonResponse({"views": request.session.get("views")})


def put(request: HttpRequest) -> JsonResponse:
    request.session["put"] = request.GET.get("value", "x")
    return JsonResponse({"put": request.session["put"]})


def flush(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return HttpResponse("flushed")


def rotate(request: HttpRequest) -> HttpResponse:
    """Rotate the key as django.contrib.auth.login does, then redirect."""
    request.session["rotated"] = True
    request.session.cycle_key()
    return redirect("state")


@session_disabled
def disabled(request: HttpRequest) -> HttpResponse:
    return HttpResponse("no session")


async def async_put(request: HttpRequest) -> JsonResponse:
    await request.session.aset("put", "async")
    return JsonResponse({"key": request.session.session_key})


def links(request: HttpRequest) -> HttpResponse:
    return render(request, "cookielessapp/links.html")


@login_required
def private(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"private page of {request.user.get_username()}")


def any_path(request: HttpRequest) -> HttpResponse:
    """The catch-all view of ``anyurls``: ``?do=put`` writes the session, ``?do=leave`` logs out.

    ``leave`` flushes the session and sends the visitor back to the page they were on, built from
    the script prefix as ``reverse()`` builds URLs (so the Location carries the key the request
    came with, and the middleware must remove it).
    """
    action = request.GET.get("do")
    if action == "put":
        request.session["put"] = request.get_full_path()
        return JsonResponse({"put": request.session["put"]})
    if action == "leave":
        request.session.flush()
        return HttpResponseRedirect(get_script_prefix()[:-1] + escape_uri_path(request.path_info))
    return JsonResponse({"path": request.path, "views": request.session.get("views")})
