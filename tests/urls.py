from __future__ import annotations

from django.urls import path

from tests import views

urlpatterns = [
    path("increment/", views.increment),
    path("read/", views.read),
    path("read-only/", views.read_only),
    path("read-only-write/", views.read_only_write),
    path("read-only-untouched/", views.read_only_untouched),
    path("disabled/", views.disabled),
    path("unmarked-disabled-twin/", views.unmarked_disabled_twin),
    path("disabled-touch/", views.disabled_touch),
    path("async-increment/", views.async_increment),
    path("async-read-only/", views.async_read_only),
    path("cbv-read-only/", views.ReadOnlyView.as_view()),
    path("server-error/", views.server_error),
    path("raises/", views.raises),
    path("release-early/", views.release_early),
]
