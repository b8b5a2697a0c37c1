"""Off mode: sessions disabled for the whole site (ASP.NET ``mode="Off"``).

No store, no I/O, no cookie: the middleware sees an engine that is never accessed. Any use of
``request.session`` raises ``SessionStateDisabled`` with a message saying how to enable it.
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.contrib.sessions.backends.base import SessionBase

from django_statemodes.exceptions import SessionStateDisabled

__all__ = ["MESSAGE", "SessionStore"]

MESSAGE = (
    "Session state is off for this site (SESSION_ENGINE = 'django_statemodes.backends.off'). "
    "Set SESSION_ENGINE to an engine such as 'django_statemodes.backends.inproc' to use "
    "request.session."
)


class SessionStore(SessionBase):
    """A session engine that refuses every use."""

    #: Read by the middleware and the cookieless transport: never save, release or send it.
    disabled = True

    def __init__(self, session_key: str | None = None, access: Any = None) -> None:
        super().__init__(None)

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise SessionStateDisabled(MESSAGE)

    def _get_session(self, no_load: bool = False) -> NoReturn:
        self._refuse()

    async def _aget_session(self, no_load: bool = False) -> NoReturn:
        self._refuse()

    _session = property(_get_session)

    clear = exists = create = save = delete = load = flush = cycle_key = _refuse
    aexists = acreate = asave = adelete = aload = aflush = acycle_key = _refuse

    @classmethod
    def clear_expired(cls) -> None:
        """Nothing is stored, so nothing expires."""
