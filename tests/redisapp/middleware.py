"""Say which worker process served each response, so tests can tell gunicorn's workers apart."""

from __future__ import annotations

import os
from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

PID_HEADER = "X-Worker-Pid"


def worker_pid(
    get_response: Callable[[HttpRequest], HttpResponseBase],
) -> Callable[[HttpRequest], HttpResponseBase]:
    """Add the worker's pid to every response, the session middleware's 503s included."""

    def middleware(request: HttpRequest) -> HttpResponseBase:
        response = get_response(request)
        response[PID_HEADER] = str(os.getpid())
        return response

    return middleware
