"""The per-view session-state modes (ASP.NET ``EnableSessionState``)."""

from __future__ import annotations

from typing import Final, Literal

__all__ = ["DISABLED", "MODES", "READ_ONLY", "READ_WRITE", "SessionStateMode"]

SessionStateMode = Literal["ReadWrite", "ReadOnly", "Disabled"]

READ_WRITE: Final = "ReadWrite"  # EnableSessionState="True": exclusive lock
READ_ONLY: Final = "ReadOnly"  # EnableSessionState="ReadOnly": no lock, no writes
DISABLED: Final = "Disabled"  # EnableSessionState="False": no session at all

MODES: Final[tuple[SessionStateMode, ...]] = (READ_WRITE, READ_ONLY, DISABLED)
