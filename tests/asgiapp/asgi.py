"""ASGI entry point for uvicorn: ``uvicorn tests.asgiapp.asgi:application``."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.asgiapp.settings")
os.environ.setdefault("STATEMODES_DJANGO_TESTS", "0")
application = get_asgi_application()
