from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.starvationapp.settings")
os.environ.setdefault("STATEMODES_DJANGO_TESTS", "0")
application = get_wsgi_application()
