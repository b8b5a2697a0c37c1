"""The cookieless test site plus a catch-all view: any path reaches the session.

The security tests send paths such as ``//evil.example/`` and ``/\\evil.example/``: with the
site's own URLconf they would be 404s, which never store a session or rewrite a redirect.
"""

from __future__ import annotations

from django.urls import re_path

from tests.cookielessapp import urls, views

urlpatterns = [*urls.urlpatterns, re_path(r"", views.any_path)]
