"""A tiny Django site served by gunicorn for the lost-update and HTTP benchmarks."""

from __future__ import annotations
