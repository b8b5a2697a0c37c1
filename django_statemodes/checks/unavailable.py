"""Check of the 503 page's view: E070."""

from __future__ import annotations

from django.core.checks import CheckMessage, Error
from django.utils.module_loading import import_string

from django_statemodes.conf import conf


def check_unavailable() -> list[CheckMessage]:
    """Check that ``STATEMODES_UNAVAILABLE_VIEW``, when set, names a callable.

    A wrong path would otherwise surface only while the store is down, the worst moment.
    """
    # Typed str | None, but a settings file may hold anything.
    path: object = conf.STATEMODES_UNAVAILABLE_VIEW
    if path is None:
        return []
    problem: str | None = None
    if not isinstance(path, str) or not path:
        problem = f"STATEMODES_UNAVAILABLE_VIEW is {path!r}, not a dotted path."
    else:
        try:
            view = import_string(path)
        except ImportError as exc:
            problem = f"STATEMODES_UNAVAILABLE_VIEW {path!r} cannot be imported: {exc}"
        else:
            if not callable(view):
                problem = f"STATEMODES_UNAVAILABLE_VIEW {path!r} is not callable."
    if problem is None:
        return []
    return [
        Error(
            problem,
            hint="Name a view(request, exception) returning an HttpResponse, as for "
            "handler500, or None for the statemodes/503.html template.",
            id="django_statemodes.E070",
        )
    ]
