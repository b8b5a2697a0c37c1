"""Django's own session tests against the InProc engine (other engines: their own modules)."""

from __future__ import annotations

from django_statemodes.backends.inproc import SessionStore
from tests.django_suite import make_django_suite

InProcSessionTests, InProcMiddlewareTests = make_django_suite(
    "django_statemodes.backends.inproc", SessionStore
)
