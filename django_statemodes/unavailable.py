"""The 503 page: a store that is down, or a session whose lock queue is full.

A site restyles it with its own ``statemodes/503.html`` (its ``TEMPLATES`` find it before ours)
or replaces it with a view named by ``STATEMODES_UNAVAILABLE_VIEW``, called as Django calls
``handler500``: ``view(request, exception)``. Visitors see the store's address, the setting to
check and the error's text only when ``DEBUG`` is on; the log carries them always (the
middleware logs before it answers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.template import TemplateDoesNotExist, loader
from django.utils.html import escape
from django.utils.module_loading import import_string

from django_statemodes.conf import conf
from django_statemodes.exceptions import SessionQueueFull, SessionStoreUnavailable

__all__ = [
    "QUEUE_FULL",
    "RETRY_AFTER",
    "TEMPLATE",
    "UNAVAILABLE",
    "context_for",
    "unavailable_response",
]

logger = logging.getLogger("django_statemodes")

#: Seconds a client is asked to wait after a 503.
RETRY_AFTER = 5
TEMPLATE = "statemodes/503.html"
#: The reason codes in the template's context.
UNAVAILABLE = "unavailable"
QUEUE_FULL = "queue_full"

UnavailableView = Callable[[HttpRequest, Exception], HttpResponse]

# The page when no template engine finds statemodes/503.html (a site without TEMPLATES, or
# without APP_DIRS), like Django's own fallback for a missing 500.html.
_FALLBACK = (
    '<!doctype html><html lang="en"><head><title>503 {title}</title></head>'
    "<body><h1>{title}</h1>{detail}<p>Please try again in a few seconds.</p></body></html>"
)


def context_for(exc: Exception) -> dict[str, Any]:
    """The template's context: what any visitor may see, and the detail only under DEBUG."""
    if isinstance(exc, SessionQueueFull):
        reason, title = QUEUE_FULL, "Too many requests for this session"
    else:
        reason, title = UNAVAILABLE, "Session state is unavailable"
    context: dict[str, Any] = {
        "reason": reason,
        "title": title,
        "retry_after": RETRY_AFTER,
        "detail": None,
        "setting": None,
    }
    if settings.DEBUG:
        # Addresses, ports, setting names and flags help the developer, and an attacker.
        context["detail"] = str(exc)
        if isinstance(exc, SessionStoreUnavailable):
            context["setting"] = exc.setting
    return context


def _page(context: dict[str, Any]) -> str:
    try:
        template = loader.get_template(TEMPLATE)
    except TemplateDoesNotExist:
        detail = f"<p>{escape(context['detail'])}</p>" if context["detail"] else ""
        return _FALLBACK.format(title=escape(context["title"]), detail=detail)
    # Rendered without the request, as Django renders 500.html: context processors would
    # touch request.user and so the session, whose store is what just failed.
    return template.render(context)


def _custom_view() -> UnavailableView | None:
    path = conf.STATEMODES_UNAVAILABLE_VIEW
    if not path:
        return None
    view: UnavailableView = import_string(path)
    return view


def unavailable_response(request: HttpRequest, exc: Exception) -> HttpResponse:
    """Return the 503 answer for ``exc`` (``SessionStoreUnavailable`` or ``SessionQueueFull``)."""
    response: HttpResponse | None = None
    view = _custom_view()
    if view is not None:
        try:
            response = view(request, exc)
        except Exception:
            # The site's page failed while the store is down: the default page still answers.
            logger.exception("STATEMODES_UNAVAILABLE_VIEW %r raised; using the default page.", view)
    if response is None:
        response = HttpResponse(_page(context_for(exc)), status=503)
    if not response.has_header("Retry-After"):
        response["Retry-After"] = str(RETRY_AFTER)
    return response
