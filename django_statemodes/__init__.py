"""ASP.NET's session-state modes for Django."""

from __future__ import annotations

# The one place the version is written: pyproject.toml reads it (setuptools dynamic version).
__version__ = "2.0.0"
