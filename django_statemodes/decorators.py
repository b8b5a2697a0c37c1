"""Per-view session-state modes: ASP.NET's ``<%@ Page EnableSessionState="..." %>``.

A decorator only marks the view (like Django's ``csrf_exempt``); ``SessionStateMiddleware`` reads
the mark before the view runs. Class-based views set a ``session_state`` class attribute instead.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction

from django_statemodes.modes import DISABLED, MODES, READ_ONLY, SessionStateMode

__all__ = ["session_disabled", "session_readonly", "session_state", "view_mode"]

V = TypeVar("V", bound=Callable[..., Any])


def session_state(mode: SessionStateMode) -> Callable[[V], V]:
    """Mark a view to run with the given session-state mode."""
    if mode not in MODES:
        raise ValueError(f"session_state() takes one of {', '.join(MODES)}, not {mode!r}.")

    def decorator(view_func: V) -> V:
        # Decorators are nicer if they don't have side effects, so return a new function.
        _view_wrapper: Callable[..., Any]
        if iscoroutinefunction(view_func):

            async def _async_wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
                return await view_func(request, *args, **kwargs)

            _view_wrapper = _async_wrapper
        else:

            def _sync_wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
                return view_func(request, *args, **kwargs)

            _view_wrapper = _sync_wrapper
        wrapper = wraps(view_func)(_view_wrapper)
        wrapper.session_state = mode  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def session_readonly(view_func: V) -> V:
    """Mark a view ReadOnly: it reads the session without locking or waiting, and cannot write."""
    return session_state(READ_ONLY)(view_func)


def session_disabled(view_func: V) -> V:
    """Mark a view Disabled: no session I/O, no cookie; touching the session raises."""
    return session_state(DISABLED)(view_func)


def view_mode(view_func: Callable[..., Any]) -> SessionStateMode | None:
    """Return the mode a view is marked with, or None (function marker, then CBV attribute)."""
    mode = getattr(view_func, "session_state", None)
    if mode is None:
        view_class = getattr(view_func, "view_class", None)
        mode = getattr(view_class, "session_state", None)
    if mode is not None and mode not in MODES:
        raise ValueError(
            f"{getattr(view_func, '__qualname__', view_func)!r} has session_state = {mode!r}; "
            f"use one of {', '.join(MODES)}."
        )
    return mode
