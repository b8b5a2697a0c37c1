"""One body for the sync and the async path of every session operation.

A session operation that talks to the store is written once, as a generator that yields the
provider calls it needs (``Call``) and receives their results. ``run`` performs the calls with
the provider's blocking methods, ``arun`` awaits their ``a``-prefixed twins. The two paths
cannot drift because there is only one of them (the sans-IO idea of h11, applied to a session).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

from django_statemodes.providers.base import SessionStateProvider

__all__ = ["NO_KEYWORDS", "Call", "Steps", "arun", "run"]

T = TypeVar("T")


#: A provider method to call: its sync name, positional and keyword arguments. A plain tuple,
#: not a NamedTuple: a few are built on every request, and a tuple display costs a tenth.
Call = tuple[str, tuple[Any, ...], dict[str, Any]]

#: The keyword arguments of a call that has none (never mutated).
NO_KEYWORDS: dict[str, Any] = {}

#: A session operation: yields provider calls, receives their results, returns ``T``.
Steps = Generator[Call, Any, T]


def run(steps: Steps[T], provider: SessionStateProvider) -> T:
    """Run ``steps`` with the provider's blocking methods and return their result."""
    try:
        call = next(steps)
        while True:
            name, args, kwargs = call
            try:
                result = getattr(provider, name)(*args, **kwargs)
            except BaseException as exc:
                # Into the generator, so its ``finally`` and ``with`` blocks see the failure.
                call = steps.throw(exc)
            else:
                call = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def arun(steps: Steps[T], provider: SessionStateProvider) -> T:
    """Run ``steps`` with the provider's async twins (``aget`` for ``get``, ...)."""
    try:
        call = next(steps)
        while True:
            name, args, kwargs = call
            try:
                result = await getattr(provider, "a" + name)(*args, **kwargs)
            except BaseException as exc:
                # Cancellation included: the generator's cleanup runs before it propagates.
                call = steps.throw(exc)
            else:
                call = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
