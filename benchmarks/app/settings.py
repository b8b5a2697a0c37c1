"""The benchmark site: ``benchmarks.settings`` with the engine named by the environment.

``STATEMODES_BENCH_ENGINE`` is a name from ``benchmarks.engines`` (or ``none``: no session
middleware at all, the HTTP floor). The floors whose views do a session's two round trips by
hand on their store (``BY_HAND``) have no session middleware either. Our engines run under
``SessionStateMiddleware``, Django's and the other floors under Django's own
``SessionMiddleware``, as their users run them.
"""

from __future__ import annotations

import os

from benchmarks.engines import BY_HAND, ENGINES, OURS
from benchmarks.settings import *  # noqa: F403

ENGINE_NAME = os.environ.get("STATEMODES_BENCH_ENGINE", "inproc")

if ENGINE_NAME == "none" or ENGINE_NAME in BY_HAND:
    MIDDLEWARE = []
else:
    _engine = ENGINES[ENGINE_NAME]
    assert _engine.module is not None, f"{ENGINE_NAME} is not a session engine"
    SESSION_ENGINE = _engine.module
    globals().update(_engine.settings())
    if _engine.kind == OURS:
        MIDDLEWARE = ["django_statemodes.middleware.SessionStateMiddleware"]
    else:
        MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
