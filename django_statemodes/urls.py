"""URLs of the sessions page: ``path("account/sessions/", include("django_statemodes.urls"))``."""

from __future__ import annotations

from django.urls import path

from django_statemodes import views

app_name = "statemodes"

urlpatterns = [
    path("", views.sessions_page, name="sessions"),
]
