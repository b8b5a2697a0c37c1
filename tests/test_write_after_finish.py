"""A write to the session after the request was finished names the cause (issue 14, point 8).

Two ways to write a released session, two messages: the view called ``release()`` itself, or a
middleware listed before ``SessionStateMiddleware`` wrote in its response phase, after ours had
saved and unlocked the session.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path

from django_statemodes.exceptions import SessionStateReadOnly


class WritesAfterResponse:
    """An outer middleware that writes the session on the way out, as a careless one would."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        request.session["last_seen"] = "now"
        return response


def writes(request: HttpRequest) -> HttpResponse:
    request.session["visits"] = 1
    return HttpResponse("ok")


def writes_after_release(request: HttpRequest) -> HttpResponse:
    request.session["visits"] = 1
    request.session.release()  # type: ignore[attr-defined]
    request.session["visits"] = 2
    return HttpResponse("unreachable")


urlpatterns = [
    path("writes/", writes),
    path("writes-after-release/", writes_after_release),
]

INNER = ["django_statemodes.middleware.SessionStateMiddleware"]


@override_settings(
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[f"{__name__}.WritesAfterResponse", *INNER],
)
def test_an_outer_middleware_writing_after_the_response_is_told_the_middleware_order() -> None:
    with pytest.raises(SessionStateReadOnly) as caught:
        Client().get("/writes/")
    message = str(caught.value)
    assert "SessionStateMiddleware" in message
    assert "MIDDLEWARE" in message
    assert "after" in message and "response" in message
    assert "release()" not in message  # nothing called it


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=INNER)
def test_a_write_after_the_views_own_release_still_names_release() -> None:
    with pytest.raises(SessionStateReadOnly) as caught:
        Client().get("/writes-after-release/")
    message = str(caught.value)
    assert "request.session.release()" in message
    assert "MIDDLEWARE" not in message
