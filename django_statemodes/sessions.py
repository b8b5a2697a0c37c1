"""Sessions by user: list a user's sessions, end one, or end them all ("sign out everywhere").

Needs ``STATEMODES_USER_INDEX = True`` and an engine of django-statemodes whose store keeps the
index (InProc, StateServer, SQL, Redis). A user is a user object or its primary key; the index
keys users by ``str(user.pk)``.

Ending a session removes it from the store whatever its lock state, and sends ``session_end``
(reason ``"abandoned"``, with its data). A request of it still in flight cannot save it back:
its write carries the lock it took, which no longer exists, and is refused.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.crypto import salted_hmac
from django.utils.module_loading import import_string

from django_statemodes.conf import conf
from django_statemodes.core import users
from django_statemodes.core.calls import NO_KEYWORDS, Steps, arun, run
from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.items import ExpiredItem, SessionInfo
from django_statemodes.providers.base import SessionStateProvider
from django_statemodes.signals import session_end

__all__ = [
    "SessionInfo",
    "aend_session",
    "aend_user_sessions",
    "auser_sessions",
    "connect",
    "end_session",
    "end_user_sessions",
    "engine_indexes_users",
    "provider",
    "session_reference",
    "user_sessions",
]

logger = logging.getLogger("django_statemodes")


def _engine() -> type[StateModeSessionBase]:
    engine = import_string(settings.SESSION_ENGINE + ".SessionStore")
    if not (isinstance(engine, type) and issubclass(engine, StateModeSessionBase)):
        raise ImproperlyConfigured(
            f"Sessions by user need an engine of django-statemodes; SESSION_ENGINE is "
            f"{settings.SESSION_ENGINE!r}."
        )
    return engine


def engine_indexes_users() -> bool:
    """Whether the index is on and the ``SESSION_ENGINE``'s store keeps it."""
    if not conf.STATEMODES_USER_INDEX:
        return False
    try:
        return _engine().get_provider().indexes_users
    except ImproperlyConfigured:
        return False


def _provider(engine: type[StateModeSessionBase]) -> SessionStateProvider:
    if not conf.STATEMODES_USER_INDEX:
        raise ImproperlyConfigured(
            "Sessions by user need STATEMODES_USER_INDEX = True: with it off, the store "
            "records no user beside the sessions."
        )
    provider = engine.get_provider()
    if not provider.indexes_users:
        raise ImproperlyConfigured(
            f"The store of {settings.SESSION_ENGINE!r} ({type(provider).__name__}) keeps no "
            "index of sessions by user."
        )
    return provider


def provider() -> SessionStateProvider:
    """The ``SESSION_ENGINE``'s provider, if it keeps the index (else ImproperlyConfigured)."""
    return _provider(_engine())


def session_reference(session_key: str) -> str:
    """A name for a session that pages and forms may show: a keyed digest, never the key.

    A session key is a credential: the sessions page and the admin name other sessions by this
    instead, and find them again among the sessions they list.
    """
    return salted_hmac(
        "django_statemodes.sessions.reference", session_key, algorithm="sha256"
    ).hexdigest()[:24]


def user_id_of(user: Any) -> str:
    """The index's id of ``user``: ``str(user.pk)``, or the id itself if given one."""
    if isinstance(user, (str, int)):
        return str(user)
    pk = getattr(user, "pk", None)
    if pk is None:
        raise ValueError("Sessions by user need a saved user (or its primary key).")
    return str(pk)


# One body per operation for both paths (core.calls): generators of provider calls.


def _user_sessions(user_id: str) -> Steps[list[SessionInfo]]:
    infos: list[SessionInfo] = yield ("user_sessions", (user_id,), NO_KEYWORDS)
    return sorted(infos, key=lambda info: info.last_seen, reverse=True)


def _end_session(engine: type[StateModeSessionBase], session_key: str) -> Steps[bool]:
    data = None
    if session_end.has_listeners():
        item = yield ("get", (session_key,), NO_KEYWORDS)
        data = None if item is None else item.data
    # lock_id=None: removed whatever its lock state, so a request holding it cannot save it
    # back (its write names a lock that no longer exists, and is refused).
    removed: bool = yield ("remove", (session_key, None), NO_KEYWORDS)
    if removed and session_end.has_listeners():
        engine._expired(ExpiredItem(session_key, data), reason="abandoned")
    return removed


def _end_user_sessions(
    engine: type[StateModeSessionBase], user_id: str, keep: str | None
) -> Steps[int]:
    infos = yield from _user_sessions(user_id)
    ended = 0
    for info in infos:
        if info.session_key != keep:
            ended += yield from _end_session(engine, info.session_key)
    return ended


def user_sessions(user: Any) -> list[SessionInfo]:
    """Return the live sessions of ``user``, most recently seen first."""
    provider = _provider(_engine())
    result: list[SessionInfo] = run(_user_sessions(user_id_of(user)), provider)
    return result


async def auser_sessions(user: Any) -> list[SessionInfo]:
    provider = _provider(_engine())
    result: list[SessionInfo] = await arun(_user_sessions(user_id_of(user)), provider)
    return result


def end_session(session_key: str) -> bool:
    """End the session ``session_key`` at once; return False if it did not exist."""
    engine = _engine()
    ended: bool = run(_end_session(engine, session_key), _provider(engine))
    return ended


async def aend_session(session_key: str) -> bool:
    engine = _engine()
    ended: bool = await arun(_end_session(engine, session_key), _provider(engine))
    return ended


def end_user_sessions(user: Any, keep: str | None = None) -> int:
    """End every session of ``user`` but ``keep`` (a session key); return how many ended."""
    engine = _engine()
    steps = _end_user_sessions(engine, user_id_of(user), keep)
    ended: int = run(steps, _provider(engine))
    return ended


async def aend_user_sessions(user: Any, keep: str | None = None) -> int:
    engine = _engine()
    steps = _end_user_sessions(engine, user_id_of(user), keep)
    ended: int = await arun(steps, _provider(engine))
    return ended


# Receivers (connected by the app's ready() when django.contrib.auth is installed).


def _logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    session = getattr(request, "session", None)
    if not isinstance(session, StateModeSessionBase) or not users.index_on():
        return
    if not session.get_provider().indexes_users:
        return
    ip, agent = users.client_of(request)
    session.bind_to_user(str(user.pk), ip=ip, user_agent=agent)


def _user_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    # AbstractBaseUser.set_password() keeps the raw password in ``_password`` until save() has
    # run its validators' password_changed(); post_save fires in between. Django sends no
    # signal for a password change, and this sees every one: a view, the admin, a command.
    if getattr(instance, "_password", None) is None or kwargs.get("created") or kwargs.get("raw"):
        return  # no password change, or a new user (no sessions yet), or fixtures loading
    if not conf.STATEMODES_SIGN_OUT_EVERYWHERE_ON_PASSWORD_CHANGE or not users.index_on():
        return
    if not hasattr(instance, "get_session_auth_hash") or instance.pk is None:
        return
    if not engine_indexes_users():
        return
    ended = end_user_sessions(instance, keep=users.current_session.get())
    logger.info("Password changed: ended %d other session(s) of user %s.", ended, instance.pk)


def connect() -> None:
    """Connect the receivers that bind sessions at sign-in and end them on a password change."""
    from django.contrib.auth.signals import user_logged_in
    from django.db.models.signals import post_save

    user_logged_in.connect(_logged_in, dispatch_uid="django_statemodes.user_index.login")
    post_save.connect(_user_saved, dispatch_uid="django_statemodes.user_index.password")
