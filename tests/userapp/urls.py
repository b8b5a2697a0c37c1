from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.urls import include, path


def whoami(request: HttpRequest) -> HttpResponse:
    name = request.user.get_username() if request.user.is_authenticated else "stranger"
    return HttpResponse(f'<p id="who">{name}</p>')


urlpatterns = [
    path("", whoami, name="home"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="userapp/form.html", next_page="home"),
        name="login",
    ),
    path(
        "password/",
        auth_views.PasswordChangeView.as_view(template_name="userapp/form.html", success_url="/"),
        name="password",
    ),
    path("account/sessions/", include("django_statemodes.urls")),
]
