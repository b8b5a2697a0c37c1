"""The 503 page (issue 14, point 6): a template or a site's view, internals only under DEBUG.

The store that is down is real: a StateServer engine pointed at a loopback port where nothing
listens (connection refused), and, through gunicorn, a state server that was running and is
stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.checks import CheckMessage
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings

from django_statemodes.checks import check_settings
from django_statemodes.exceptions import SessionQueueFull
from django_statemodes.unavailable import QUEUE_FULL, UNAVAILABLE, context_for
from tests.conftest import free_port
from tests.farm import WebServer
from tests.fixtures_stateserver import StateServerProcess
from tests.server import get

COOKIE = "sessionid"
SETTING = b"STATEMODES_STATE_CONNECTION"


def site_page(request: HttpRequest, exception: Exception) -> HttpResponse:
    """A site's own 503 view (``STATEMODES_UNAVAILABLE_VIEW``)."""
    return HttpResponse(f"our own page: {type(exception).__name__}", status=503)


def broken_page(request: HttpRequest, exception: Exception) -> HttpResponse:
    raise RuntimeError("the site's 503 view is broken too")


not_a_view = 42


@pytest.fixture
def down() -> Iterator[str]:
    """A StateServer engine whose server refuses connections: the address it names."""
    port = free_port()  # bound and released: nothing listens there
    address = f"127.0.0.1:{port}"
    overrides = override_settings(
        SESSION_ENGINE="django_statemodes.backends.stateserver",
        STATEMODES_STATE_CONNECTION=f"tcpip={address}",
        STATEMODES_STATE_NETWORK_TIMEOUT=2,
    )
    overrides.enable()
    yield address
    overrides.disable()


def _unavailable(path: str = "/increment/") -> HttpResponse:
    client = Client()
    client.cookies[COOKIE] = "a" * 32
    response = client.get(path)
    assert response.status_code == 503, response.content[:300]
    assert response["Retry-After"] == "5"
    return response  # type: ignore[return-value]


def test_without_debug_visitors_see_no_address_port_or_setting(
    down: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = down.rsplit(":", 1)[1]
    with caplog.at_level(logging.ERROR, logger="django_statemodes"):
        body = _unavailable().content
    assert b"Session state is unavailable" in body
    assert port.encode() not in body and b"127.0.0.1" not in body
    assert SETTING not in body and b"STATEMODES_" not in body and b"--" not in body
    # The log still carries everything the page leaves out.
    assert down in caplog.text and "STATEMODES_STATE_CONNECTION" in caplog.text


@override_settings(DEBUG=True)
def test_with_debug_the_page_names_the_address_and_the_setting(down: str) -> None:
    body = _unavailable().content
    assert down.encode() in body
    assert b"Check " + SETTING in body


def test_a_project_template_overrides_the_page(down: str, tmp_path: Path) -> None:
    (tmp_path / "statemodes").mkdir()
    (tmp_path / "statemodes" / "503.html").write_text(
        "site page: {{ reason }} retry={{ retry_after }} detail={{ detail }}"
    )
    templates = [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "DIRS": [str(tmp_path)],
            "APP_DIRS": True,
        }
    ]
    with override_settings(TEMPLATES=templates):
        body = _unavailable().content.decode()
    assert body == f"site page: {UNAVAILABLE} retry=5 detail=None"


def test_the_context_names_the_reason_and_hides_the_queue_limit() -> None:
    exc = SessionQueueFull("3 requests are already waiting; STATEMODES_LOCK_QUEUE_LIMIT")
    context = context_for(exc)
    assert context["reason"] == QUEUE_FULL and context["retry_after"] == 5
    assert context["detail"] is None and context["setting"] is None
    with override_settings(DEBUG=True):
        assert "STATEMODES_LOCK_QUEUE_LIMIT" in context_for(exc)["detail"]


@override_settings(STATEMODES_UNAVAILABLE_VIEW=f"{__name__}.site_page")
def test_a_configured_view_answers_and_keeps_retry_after(down: str) -> None:
    assert _unavailable().content.startswith(b"our own page: ")  # a SessionStoreUnavailable


@override_settings(STATEMODES_UNAVAILABLE_VIEW=f"{__name__}.broken_page")
def test_a_broken_configured_view_falls_back_to_the_template(
    down: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="django_statemodes"):
        body = _unavailable().content
    assert b"Session state is unavailable" in body and SETTING not in body
    assert "the site's 503 view is broken too" in caplog.text


def _e070() -> list[CheckMessage]:
    return [m for m in check_settings() if m.id == "django_statemodes.E070"]


def test_the_view_setting_is_checked_at_startup() -> None:
    assert _e070() == []
    with override_settings(STATEMODES_UNAVAILABLE_VIEW=f"{__name__}.site_page"):
        assert _e070() == []
    for wrong in ("no.such.view", f"{__name__}.not_a_view", 42):
        with override_settings(STATEMODES_UNAVAILABLE_VIEW=wrong):
            assert len(_e070()) == 1, wrong


@pytest.mark.stateserver
@pytest.mark.slow
def test_through_gunicorn_a_stopped_state_server_shows_no_internals() -> None:
    server = StateServerProcess().start()
    try:
        with WebServer(server.connection) as web:  # tests/farmapp: DEBUG = False, no TEMPLATES
            status, headers, body = get(web.port, "/incr")
            assert status == 200
            cookie = headers["set-cookie"].split("sessionid=", 1)[1].split(";", 1)[0]
            server.stop()
            status, headers, body = get(web.port, "/incr", cookie)
            assert status == 503, body
            assert headers["retry-after"] == "5"
            assert b"Session state is unavailable" in body
            assert str(server.port).encode() not in body and SETTING not in body
            # The worker's log has the details.
            assert "STATEMODES_STATE_CONNECTION" in web.log.read_text()
    finally:
        server.stop()
