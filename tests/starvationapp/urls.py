from __future__ import annotations

from django.urls import include, path

from tests.starvationapp import views

urlpatterns = [
    path("hold/", views.hold),
    path("", include("tests.urls")),
]
