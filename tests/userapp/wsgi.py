"""WSGI entry point of the sessions-by-user test site."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.userapp.settings")
application = get_wsgi_application()
