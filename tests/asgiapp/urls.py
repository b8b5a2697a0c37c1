from __future__ import annotations

from django.urls import path

from tests.asgiapp import views

urlpatterns = [
    path("ping/", views.ping),
    path("aincrement/", views.aincrement),
    path("increment/", views.increment),
    path("read/", views.read),
    path("sync-in-async/", views.sync_in_async),
    path("hold/", views.hold),
    path("peek/", views.peek),
]
