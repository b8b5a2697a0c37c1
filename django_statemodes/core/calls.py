"""One body for the sync and the async path of every session operation.

A session operation that talks to the store is written once, in one of two forms, and ``run``
performs its provider calls with the blocking methods while ``arun`` awaits their
``a``-prefixed twins (``aget`` for ``get``). The two paths cannot drift because there is only
one of them (the sans-IO idea of h11, applied to a session).

- **An op** (``Op``), for the few operations on every request's path (load, finish): the
  operation's first step returns either its result, or a provider call together with the
  continuation that takes the call's answer (``(name, args, kwargs, then)``), or ``Steps``
  for whatever is left. No generator is built when one call does the job: a generator costs
  about 0.4 µs to run, a third of an InProc request's own work.
- **Steps**, for everything else: a generator that yields provider calls (``Call``) and
  receives their answers; the drivers throw failures into it, so its ``finally`` and ``with``
  blocks run. ``steps_of`` turns an op into steps, so steps can use ops.

``run`` refuses to call the store from a thread that runs an event loop and ``arun`` shields
the lock-changing calls from cancellation (``core.cancellation``).

A step of ``Steps`` may also name a blocking function instead of a provider method (reading the
engine a site switched from, ``core.adoption``): ``run`` calls it, ``arun`` runs it in a thread
as Django's ``sync_to_async`` does.

An op's result is never a tuple or a generator: those are its next step.
"""

from __future__ import annotations

from asyncio.events import _get_running_loop
from collections.abc import Generator
from types import GeneratorType
from typing import Any, TypeVar

from asgiref.sync import sync_to_async

from .cancellation import call, refuse_sync

__all__ = ["NO_KEYWORDS", "Call", "Op", "Steps", "arun", "run", "steps_of"]

T = TypeVar("T")


#: A provider method to call: its sync name, positional and keyword arguments. A plain tuple,
#: not a NamedTuple: a few are built on every request, and a tuple display costs a tenth. In
#: ``Steps`` only, the name may be a blocking function to call instead.
Call = tuple[Any, tuple[Any, ...], dict[str, Any]]

#: The keyword arguments of a call that has none (never mutated).
NO_KEYWORDS: dict[str, Any] = {}

#: A session operation as a generator: yields provider calls, receives their results,
#: returns ``T``.
Steps = Generator[Call, Any, T]

#: A session operation's next step: its result, ``(name, args, kwargs, then)`` where ``then``
#: takes the call's answer and returns the next step, or ``Steps``. (Typed loosely: the type is
#: recursive, and mypy checks each op's pieces where they are written.)
Op = Any


def run(op: Op, provider: object) -> Any:
    """Run ``op`` with the provider's blocking methods and return its result.

    ``provider`` is any object with the methods the op names: the middleware runs its ops on
    the session (``finish`` / ``afinish``).
    """
    while True:
        kind = type(op)
        if kind is tuple:
            if _get_running_loop() is not None:  # C-level; the call only in a loop's thread
                refuse_sync()
            name, args, kwargs, then = op
            op = then(getattr(provider, name)(*args, **kwargs))
        elif kind is GeneratorType:
            op = _drive(op, provider)
        else:
            return op


async def arun(op: Op, provider: object) -> Any:
    """Run ``op`` with the provider's async twins and return its result."""
    while True:
        kind = type(op)
        if kind is tuple:
            name, args, kwargs, then = op
            op = then(await call(provider, name, args, kwargs))
        elif kind is GeneratorType:
            op = await _adrive(op, provider)
        else:
            return op


def steps_of(op: Op) -> Steps[Any]:
    """Return ``op`` as steps, for a generator to ``yield from``."""
    while True:
        kind = type(op)
        if kind is tuple:
            name, args, kwargs, then = op
            op = then((yield (name, args, kwargs)))
        elif kind is GeneratorType:
            op = yield from op
        else:
            return op


def _drive(steps: Steps[T], provider: object) -> T:
    try:
        step = next(steps)
        while True:
            name, args, kwargs = step
            try:
                refuse_sync()
                method = getattr(provider, name) if type(name) is str else name
                result = method(*args, **kwargs)
            except BaseException as exc:
                # Into the generator, so its ``finally`` and ``with`` blocks see the failure.
                step = steps.throw(exc)
            else:
                step = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _adrive(steps: Steps[T], provider: object) -> T:
    try:
        step = next(steps)
        while True:
            name, args, kwargs = step
            try:
                if type(name) is str:
                    result = await call(provider, name, args, kwargs)
                else:
                    result = await sync_to_async(name)(*args, **kwargs)
            except BaseException as exc:
                # Cancellation included: the generator's cleanup runs before it propagates.
                step = steps.throw(exc)
            else:
                step = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
