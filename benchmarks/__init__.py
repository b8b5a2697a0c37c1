"""Benchmarks for django-statemodes, run side by side with Django's own session engines.

Speed is measured here, never by timed tests (DESIGN.md §5). See ``docs/benchmarks.md``.
"""

from __future__ import annotations
