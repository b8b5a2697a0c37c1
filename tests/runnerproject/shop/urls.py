from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("add/<str:item>/", views.add),
    path("async/add/<str:item>/", views.async_add),
    path("cart/", views.cart),
    path("whoami/", views.whoami),
]
