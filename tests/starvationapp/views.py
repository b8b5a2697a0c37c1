"""A view that holds its session's lock until the test creates a file (bounded)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from django.http import HttpRequest, HttpResponse

#: The longest a held request waits for the test's release: far above the test's needs.
HOLD_LIMIT = 60.0


def hold(request: HttpRequest) -> HttpResponse:
    """Lock the session (first touch), say so with ``held``, wait for ``release``, answer."""
    flags = Path(os.environ["STATEMODES_STARVATION_DIR"])
    request.session["held"] = True
    (flags / "held").touch()
    deadline = time.monotonic() + HOLD_LIMIT
    while not (flags / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return HttpResponse("released")
