"""Sessions moved on their first request from the engine a site switched from.

``STATEMODES_IMPORT_FROM`` names that engine (one of Django's, or one of ours). When a request
brings a key the configured store lacks, the core reads the key's live session from the old
engine through that engine's own ``SessionStore`` (its decoding, signing and expiry rules),
writes it into the new store as a new item, and deletes it from the old one: a move, not a
copy, so a session signed out under the new engine cannot come back from the old store when its
cookie is replayed. Unlike ``manage.py importsessions``, this reaches InProc's memory too, since
it runs in the web process.

Both functions block (the old engine's database, cache or files): the async path runs them in a
thread, as Django's ``SessionBase`` a-methods do. An old store that fails to answer is a 503 with
``Retry-After`` (``SessionStoreUnavailable``), never a miss: a miss would start a new session and
log the user out for good, while the old store still holds theirs.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from importlib import import_module
from typing import Any

from django_statemodes.exceptions import SessionStoreUnavailable, StateModesError

__all__ = ["forget", "read"]

logger = logging.getLogger("django_statemodes")

#: True while the old engine reads: when it is one of ours, its own miss must not look for the
#: session in itself again. A context variable, so a read in a worker thread sees it too.
reading: ContextVar[bool] = ContextVar("statemodes_adoption_reading", default=False)


def read(source: str, session_key: str) -> tuple[dict[str, Any], int] | None:
    """Return the live session ``session_key`` of the engine at ``source`` and its seconds left.

    None when that engine has no live, non-empty session under the key.
    """
    old = import_module(source).SessionStore(session_key=session_key)
    token = reading.set(True)
    try:
        data: dict[str, Any] = old.load()
    except StateModesError:
        raise  # one of our engines as the source: its own 503 already
    except Exception as exc:  # its database, cache client or files: whatever it raises
        raise SessionStoreUnavailable(
            f"The session engine sessions move from ({source}) failed to read one: {exc!r}",
            setting="STATEMODES_IMPORT_FROM",
        ) from exc
    finally:
        reading.reset(token)
    # Django's engines (and ours) forget the key on a miss, an expired or a tampered session.
    if old.session_key is None or not data:
        return None
    return data, int(old.get_expiry_age())


def forget(source: str, session_key: str) -> None:
    """Delete ``session_key`` from the engine at ``source``, once its session has moved.

    A failure is logged, not raised: the session is in the new store, and the request goes on.
    """
    try:
        import_module(source).SessionStore(session_key=session_key).delete(session_key)
    except Exception as exc:
        logger.warning(
            "Session %s... moved, but not deleted from %s: %r", session_key[:8], source, exc
        )
