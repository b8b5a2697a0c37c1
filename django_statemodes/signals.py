"""Session_Start and Session_End, in every mode (ASP.NET fires Session_End for InProc only)."""

from __future__ import annotations

from django.dispatch import Signal

__all__ = ["session_end", "session_start"]

#: Sent when a new session is first stored. Arguments: ``session_key``, ``session``.
session_start = Signal()

#: Sent when a session ends. Arguments: ``session_key``, ``data`` (the session's dict, or
#: ``None`` when the store cannot report it) and ``reason``: ``"abandoned"`` (``flush()``),
#: ``"expired"`` or ``"evicted"`` (InProc memory bound).
session_end = Signal()
