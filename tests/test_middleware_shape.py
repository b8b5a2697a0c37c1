"""SessionStateMiddleware reads as it runs: nothing rebound at runtime, one resolve per request,
one body for the sync and the async path."""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path

from django_statemodes import middleware
from django_statemodes.decorators import session_readonly
from django_statemodes.exceptions import SessionStateReadOnly
from django_statemodes.middleware import CookieTransport, SessionStateMiddleware
from tests import engines

PACKAGE = Path(middleware.__file__).parent
MODES = ["UseCookies", "UseUri", "AutoDetect"]


def sync_get_response(request: HttpRequest) -> HttpResponse:
    return HttpResponse()


async def async_get_response(request: HttpRequest) -> HttpResponse:
    return HttpResponse()


@pytest.mark.parametrize("cookieless", MODES)
@pytest.mark.parametrize("get_response", [sync_get_response, async_get_response])
def test_building_the_middleware_rebinds_none_of_its_methods(
    settings: Any, cookieless: str, get_response: Callable[..., Any]
) -> None:
    settings.STATEMODES_COOKIELESS = cookieless
    built = SessionStateMiddleware(get_response)
    for obj in (built, built.transport):
        shadowed = [name for name in vars(obj) if hasattr(type(obj), name)]
        assert shadowed == [], f"{type(obj).__name__} instance attributes hide class ones"
    assert built.get_response is get_response
    assert isinstance(built.transport, CookieTransport) == (cookieless == "UseCookies")


def test_process_view_is_chosen_by_the_handlers_mode_not_assigned() -> None:
    assert isinstance(inspect.getattr_static(SessionStateMiddleware, "process_view"), property)
    assert not iscoroutinefunction(SessionStateMiddleware(sync_get_response).process_view)
    # Django would run a sync process_view in a thread under ASGI.
    assert iscoroutinefunction(SessionStateMiddleware(async_get_response).process_view)


def imports_of(module_path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(module_path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_cookieless_transport_does_not_import_the_middleware() -> None:
    # Not even under TYPE_CHECKING: the middleware imports it, so that would be a cycle.
    assert "django_statemodes.middleware" not in imports_of(PACKAGE / "cookieless_handler.py")
    assert "django_statemodes.cookieless_handler" in imports_of(PACKAGE / "middleware.py")


@pytest.mark.parametrize("module", ["middleware", "decorators", "cookieless"])
def test_the_modules_declare_their_public_names(module: str) -> None:
    imported = importlib.import_module(f"django_statemodes.{module}")
    assert imported.__all__
    assert [name for name in imported.__all__ if not hasattr(imported, name)] == []


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Count the middleware's calls of resolve() and view_mode() (Django's own resolve aside)."""
    counts = {"resolve": 0, "view_mode": 0}

    def counting(name: str) -> Callable[..., Any]:
        inner = getattr(middleware, name)

        def count(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return inner(*args, **kwargs)

        return count

    for name in counts:
        monkeypatch.setattr(middleware, name, counting(name))
    yield counts


@pytest.mark.parametrize(
    "url", ["/increment/", "/read-only/", "/disabled/", "/cbv-read-only/", "/no-such-page/"]
)
def test_our_code_resolves_nothing_and_reads_the_mode_once(
    counted: dict[str, int], url: str
) -> None:
    # The mode comes from the view Django resolved (process_view): no second resolve. A stored
    # session's cookie is sent, so there is a session to read.
    client = Client()
    client.get("/increment/")
    counted.update(resolve=0, view_mode=0)
    response = client.get(url)
    assert response.status_code in (200, 404)
    assert counted == {"resolve": 0, "view_mode": 0 if url == "/no-such-page/" else 1}


def test_the_async_path_resolves_nothing_and_reads_the_mode_once(counted: dict[str, int]) -> None:
    response = asyncio.run(AsyncClient().get("/async-read-only/"))
    assert response.status_code == 200
    assert counted == {"resolve": 0, "view_mode": 1}


class TouchSession:
    """Read the session in the request phase, before the view's mode is known (as Django's
    CsrfViewMiddleware does with CSRF_USE_SESSIONS)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.session.get("counter")
        return self.get_response(request)


@override_settings(
    MIDDLEWARE=[
        "django_statemodes.middleware.SessionStateMiddleware",
        f"{__name__}.TouchSession",
    ]
)
@pytest.mark.parametrize(("url", "locked"), [("/increment/", True), ("/read-only/", False)])
def test_a_session_touched_before_the_view_resolves_the_url_once_for_its_mode(
    counted: dict[str, int], url: str, locked: bool
) -> None:
    with override_settings(SESSION_ENGINE="tests.engine_counting"):
        engines.empty_counting_store()
        client = Client()
        client.get("/increment/")
        engines.calls.clear()
        counted.update(resolve=0, view_mode=0)
        assert client.get(url).status_code == 200
        calls = dict(engines.calls)
    assert counted["resolve"] == 1
    # Read with the lock before a ReadWrite view, without it before a ReadOnly one: the mode
    # the touch needed was the view's, learned from the URL.
    assert ("get_exclusive" in calls) is locked
    assert ("get" in calls) is not locked


@override_settings(SESSION_ENGINE="django.contrib.sessions.backends.cache")
def test_with_djangos_engines_the_middleware_resolves_nothing(counted: dict[str, int]) -> None:
    # No lock to decide before the view: Django's own resolve is enough.
    assert Client().get("/read-only/").status_code == 200
    assert counted == {"resolve": 0, "view_mode": 1}


# A middleware after ours may route the request with another urlconf (django-hosts does): the
# view Django resolves then is not the one process_request found, and its mode is the one used.


@session_readonly
def increment_read_only(request: HttpRequest) -> HttpResponse:
    request.session["counter"] = 1
    return HttpResponse()


urlpatterns = [path("increment/", increment_read_only)]


class UseThisModulesUrlconf:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.urlconf = __name__
        return self.get_response(request)


@override_settings(
    MIDDLEWARE=[
        "django_statemodes.middleware.SessionStateMiddleware",
        f"{__name__}.UseThisModulesUrlconf",
    ]
)
def test_the_view_django_resolves_decides_when_a_later_middleware_switches_the_urlconf(
    counted: dict[str, int],
) -> None:
    with pytest.raises(SessionStateReadOnly, match="increment_read_only"):
        Client().get("/increment/")
    assert counted == {"resolve": 0, "view_mode": 1}  # the view that runs, nothing resolved


# One body for both paths: the same request makes the same store calls, sync or async.


@pytest.mark.parametrize(
    ("sync_url", "async_url"),
    [("/increment/", "/async-increment/"), ("/read-only/", "/async-read-only/")],
)
def test_the_sync_and_async_paths_make_the_same_store_calls(sync_url: str, async_url: str) -> None:
    with override_settings(SESSION_ENGINE="tests.engine_counting"):
        engines.empty_counting_store()
        client = Client()
        client.get("/increment/")
        cookies = client.cookies
        engines.calls.clear()
        client.get(sync_url)
        sync_calls = dict(engines.calls)
        engines.calls.clear()
        async_client = AsyncClient()
        async_client.cookies = cookies
        asyncio.run(async_client.get(async_url))
        # InProc's async twins call the sync methods, so an async call counts under both names.
        async_calls = {name: n for name, n in engines.calls.items() if not name.startswith("a")}
    assert sync_calls == async_calls
    assert sync_calls  # the session was read, so the store was called
