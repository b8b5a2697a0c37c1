from __future__ import annotations

import asyncio

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from django_statemodes.decorators import (
    session_disabled,
    session_readonly,
    session_state,
    view_mode,
)


def plain(request: HttpRequest) -> HttpResponse:
    """A plain view."""
    return HttpResponse("plain")


async def coroutine(request: HttpRequest) -> HttpResponse:
    return HttpResponse("async")


def test_session_readonly_marks_a_new_wrapper_not_the_view() -> None:
    wrapped = session_readonly(plain)
    assert wrapped is not plain
    assert wrapped.session_state == "ReadOnly"  # type: ignore[attr-defined]
    assert not hasattr(plain, "session_state")
    assert wrapped.__doc__ == "A plain view."
    assert wrapped(RequestFactory().get("/")).content == b"plain"


def test_session_disabled_marks_disabled() -> None:
    assert view_mode(session_disabled(plain)) == "Disabled"


def test_async_views_stay_async() -> None:
    wrapped = session_state("ReadWrite")(coroutine)
    assert asyncio.iscoroutinefunction(wrapped)
    response = asyncio.run(wrapped(RequestFactory().get("/")))
    assert response.content == b"async"
    assert view_mode(wrapped) == "ReadWrite"


def test_the_outer_decorator_wins() -> None:
    assert view_mode(session_readonly(session_disabled(plain))) == "ReadOnly"


def test_an_unknown_mode_is_refused_at_decoration_time() -> None:
    with pytest.raises(ValueError, match="ReadWrite, ReadOnly, Disabled"):
        session_state("Readonly")  # type: ignore[arg-type]


def test_unmarked_views_have_no_mode() -> None:
    assert view_mode(plain) is None


def test_a_bad_class_attribute_is_reported_with_the_view() -> None:
    class View:
        session_state = "True"

    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    view.view_class = View  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="'True'"):
        view_mode(view)
