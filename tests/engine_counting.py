"""InProc with a provider that counts its calls (see tests/engines.py)."""

from __future__ import annotations

from tests.engines import SessionStore

__all__ = ["SessionStore"]
