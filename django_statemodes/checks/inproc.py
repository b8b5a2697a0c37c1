"""Checks of InProc mode's settings: E013."""

from __future__ import annotations

from django.core.checks import CheckMessage, Error

from django_statemodes.conf import conf

from .common import positive_int


def check_inproc() -> list[CheckMessage]:
    """Check the memory bound, whatever ``SESSION_ENGINE`` is (as it always has been)."""
    if positive_int(conf.STATEMODES_INPROC_MAX_SESSIONS):
        return []
    return [
        Error(
            "STATEMODES_INPROC_MAX_SESSIONS should be a positive integer.",
            id="django_statemodes.E013",
        )
    ]
