"""WSGI entry point of the cookieless test site."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.cookielessapp.settings")
application = get_wsgi_application()
