from __future__ import annotations

import os

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from django_statemodes.decorators import session_disabled


@session_disabled
def pid(request: HttpRequest) -> JsonResponse:
    """The worker's process id: recovery must not need new workers."""
    return JsonResponse({"pid": os.getpid(), "in_atomic": connection.in_atomic_block})


urlpatterns = [path("pid/", pid), path("", include("tests.urls"))]
