from __future__ import annotations

from django.urls import path

from benchmarks.app import views

urlpatterns = [
    path("ping/", views.ping),
    path("increment/", views.increment),
    path("read/", views.read),
    path("kv/increment/", views.kv_increment),
    path("redis/increment/", views.redis_increment),
    path("pg/increment/", views.pg_increment),
]
