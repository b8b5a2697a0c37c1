from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("incr", views.increment),
    path("count", views.count),
    path("hold", views.hold),
]
