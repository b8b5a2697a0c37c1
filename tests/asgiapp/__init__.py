"""A small site served by real uvicorn and runserver processes (tests/test_asgi_servers.py)."""

from __future__ import annotations
