"""URLs of the demo site."""

from django.urls import path

from testproject import views

urlpatterns = [
    path("", views.welcome, name="welcome"),
    path("login/", views.login, name="login"),
    path("logout/", views.logout, name="logout"),
    path("tour/<int:number>/", views.tour, name="tour"),
    path("tour/<int:number>/next/", views.tour_next, name="tour-next"),
    path("student/", views.student, name="student"),
    path("status/", views.status, name="status"),
    path("read-only/", views.read_only, name="read-only"),
    path("disabled/", views.disabled, name="disabled"),
    path("counter/", views.counter, name="counter"),
    path("counter/increment/", views.increment, name="increment"),
    path("counter/read-only-increment/", views.read_only_increment, name="read-only-increment"),
    path("counter/value/", views.counter_value, name="counter-value"),
    path("counter/reset/", views.counter_reset, name="counter-reset"),
    path("counter/django/increment/", views.django_increment, name="django-increment"),
    path("counter/django/value/", views.django_counter_value, name="django-counter-value"),
    path("counter/django/reset/", views.django_counter_reset, name="django-counter-reset"),
    path("favicon.ico", views.favicon, name="favicon"),
]
