"""Views of the web-farm test site; each answers the session's counter as plain text."""

from __future__ import annotations

import os
import time

from django.http import HttpRequest, HttpResponse

from django_statemodes.decorators import session_readonly


def increment(request: HttpRequest) -> HttpResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return HttpResponse(f"{request.session['n']} {os.getpid()}", content_type="text/plain")


@session_readonly
def count(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"{request.session.get('n', 0)} {os.getpid()}", content_type="text/plain")


def hold(request: HttpRequest) -> HttpResponse:
    """Take the session's lock, say which process holds it, then never finish (until killed)."""
    request.session.get("n")
    with open(os.environ["FARM_HOLD_FILE"], "w") as stream:
        stream.write(str(os.getpid()))
    time.sleep(60)
    return HttpResponse("held", content_type="text/plain")
