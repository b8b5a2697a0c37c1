"""A cart in the session, and the logged-in user: what a user's tests exercise."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse


def add(request: HttpRequest, item: str) -> HttpResponse:
    cart: list[str] = request.session.get("cart", [])
    request.session["cart"] = [*cart, item]
    return JsonResponse({"cart": request.session["cart"]})


async def async_add(request: HttpRequest, item: str) -> HttpResponse:
    cart: list[str] = await request.session.aget("cart", [])
    await request.session.aset("cart", [*cart, item])
    return JsonResponse({"cart": [*cart, item]})


def cart(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"cart": request.session.get("cart", [])})


def whoami(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"user": request.user.get_username()})
