from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from tests.cookielessapp import views

urlpatterns = [
    path("", views.home, name="home"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="cookielessapp/login.html", next_page="home"),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(next_page="home"), name="logout"),
    path("page/<int:number>/", views.page, name="page"),
    path("go/<int:number>/", views.go, name="go"),
    path("hand-written/", views.hand_written),
    path("elsewhere/", views.elsewhere),
    path("absolute/", views.absolute),
    path("state/", views.state, name="state"),
    path("touch/", views.touch),
    path("put/", views.put),
    path("flush/", views.flush),
    path("rotate/", views.rotate),
    path("disabled/", views.disabled),
    path("async-put/", views.async_put),
    path("links/", views.links),
    path("private/", views.private),
]
