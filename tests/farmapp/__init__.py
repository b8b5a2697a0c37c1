"""A tiny Django site on the StateServer engine, served by gunicorn in the web-farm tests."""

from __future__ import annotations
