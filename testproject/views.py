"""The demo pages: the scenarios of ASP.NET's session-state walkthroughs, one view each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import wraps
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import rotate_token
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from django_statemodes.conf import conf
from django_statemodes.core.locking import lock_stats
from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.decorators import session_disabled, session_readonly
from django_statemodes.exceptions import SessionStateDisabled, SessionStateReadOnly

# SESSION_ENGINE -> the ASP.NET <sessionState mode="..."> it reproduces.
MODE_NAMES = {
    "django_statemodes.backends.inproc": "InProc",
    "django_statemodes.backends.stateserver": "StateServer",
    "django_statemodes.backends.sql": "SQLServer",
    "django_statemodes.backends.custom": "Custom",
    "django_statemodes.backends.off": "Off",
}

# How many parallel increments the counter page fires.
PARALLEL_REQUESTS = 20

# How many pages the tour has.
TOUR_PAGES = 5


@dataclass
class StudentInfo:
    """The object the ASP.NET walkthrough keeps in Session["StudentInfo"]."""

    roll_number: int
    name: str


class LoginForm(forms.Form):
    name = forms.CharField(label="User name", max_length=50)


class StudentForm(forms.Form):
    roll_number = forms.IntegerField(label="Roll number", min_value=1, max_value=10**9)
    name = forms.CharField(label="Name", max_length=100)


def demo_context(request: HttpRequest) -> dict[str, Any]:
    """Template context for every page: the mode in use. Never touches the session."""
    return {
        "demo_engine": settings.SESSION_ENGINE,
        "demo_mode": MODE_NAMES.get(settings.SESSION_ENGINE, "Custom"),
        "demo_cookieless": conf.STATEMODES_COOKIELESS,
    }


def stores_objects(session: SessionBase) -> bool:
    """Say whether the engine keeps live objects (InProc) or serializes (every other mode)."""
    return isinstance(session, StateModeSessionBase) and session.get_provider().stores_objects


def explains_off(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Render a page saying why, instead of a 500, when the site's mode is Off."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except SessionStateDisabled as exc:
            return render(request, "testproject/off.html", {"message": str(exc)})

    return wrapper


# Login, welcome, logout: ASP.NET's Session["UserName"] walkthrough.


@explains_off
def welcome(request: HttpRequest) -> HttpResponse:
    name = request.session.get("user_name")
    if name is None:
        return redirect("login")
    return render(request, "testproject/welcome.html", {"name": name})


@explains_off
def login(request: HttpRequest) -> HttpResponse:
    form = LoginForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        # What django.contrib.auth.login() does: a new key against session fixation (the
        # data is kept), and a new CSRF token.
        request.session.cycle_key()
        request.session["user_name"] = form.cleaned_data["name"]
        rotate_token(request)
        return redirect("welcome")
    return render(request, "testproject/login.html", {"form": form})


@require_POST
@explains_off
def logout(request: HttpRequest) -> HttpResponse:
    # Session.Abandon(): the data goes (session_end is sent) and the key is not reused.
    request.session.flush()
    return redirect("login")


# The tour: five linked pages, each reading the name stored at login, joined by {% url %}
# links, relative links and a redirect (cookieless, every one of them keeps the URL's key).


def _tour_page(number: int) -> None:
    if not 1 <= number <= TOUR_PAGES:
        raise Http404("The tour has no such page.")


@explains_off
def tour(request: HttpRequest, number: int) -> HttpResponse:
    _tour_page(number)
    name = request.session.get("user_name")
    if name is None:
        return redirect("login")
    seen = request.session["pages_seen"] = request.session.get("pages_seen", 0) + 1
    context = {"name": name, "number": number, "pages": TOUR_PAGES, "seen": seen}
    return render(request, "testproject/tour.html", context)


def tour_next(request: HttpRequest, number: int) -> HttpResponse:
    # redirect() with a view name goes through reverse(): the script prefix, and with it the
    # cookieless segment, is kept.
    _tour_page(number)
    return redirect("tour", number + 1) if number < TOUR_PAGES else redirect("welcome")


# StudentInfo: an object stored in the session and restored on a later request.


def store_student(session: SessionBase, student: StudentInfo) -> None:
    """Store the object: live under InProc, as plain data where the session is serialized."""
    session["student"] = student if stores_objects(session) else asdict(student)


def restore_student(session: SessionBase) -> tuple[StudentInfo | None, str]:
    """Return the stored student and how it came back."""
    value = session.get("student")
    if isinstance(value, StudentInfo):
        return value, "the same live StudentInfo object (InProc keeps objects, unserialized)"
    if isinstance(value, dict):
        student = StudentInfo(roll_number=int(value["roll_number"]), name=str(value["name"]))
        return student, f"a dict, rebuilt into a StudentInfo ({settings.SESSION_SERIALIZER})"
    return None, ""


@explains_off
def student(request: HttpRequest) -> HttpResponse:
    form = StudentForm(request.POST or None)
    if request.method == "POST":
        if request.POST.get("action") == "forget":
            request.session.pop("student", None)
            return redirect("student")
        if form.is_valid():
            store_student(request.session, StudentInfo(**form.cleaned_data))
            return redirect("student")  # restored by the next request, as in the walkthrough
    restored, how = restore_student(request.session)
    context = {"form": form, "student": restored, "how": how}
    return render(request, "testproject/student.html", context)


# Status, read-only and disabled pages.


@session_readonly
def status(request: HttpRequest) -> HttpResponse:
    session = request.session
    context: dict[str, Any] = {
        "lock_stats": lock_stats.as_dict(),
        "stores_objects": stores_objects(session),
        "serializer": settings.SESSION_SERIALIZER,
        "access": getattr(session, "access", None),
        "now": timezone.now(),
    }
    try:
        keys = sorted(session.keys())  # loads first: an unknown or expired key is dropped
        context.update(
            keys=keys,
            session_key=session.session_key,
            expiry_date=session.get_expiry_date(),
            expiry_age=session.get_expiry_age(),
            at_browser_close=session.get_expire_at_browser_close(),
        )
    except SessionStateDisabled as exc:
        context["disabled"] = str(exc)
    if isinstance(session, StateModeSessionBase):
        provider = session.get_provider()
        context["provider"] = f"{type(provider).__module__}.{type(provider).__qualname__}"
    return render(request, "testproject/status.html", context)


@session_readonly
@explains_off
def read_only(request: HttpRequest) -> HttpResponse:
    # Keys starting with "_" are Django's own (_csrftoken, _auth_user_id, _session_expiry).
    data = {k: v for k, v in sorted(request.session.items()) if not k.startswith("_")}
    try:
        request.session["read_only_probe"] = timezone.now().isoformat()
    except SessionStateReadOnly as exc:
        error = str(exc)
    else:
        error = ""
    return render(request, "testproject/read_only.html", {"data": data, "error": error})


@session_disabled
def disabled(request: HttpRequest) -> HttpResponse:
    try:
        request.session.get("user_name")
    except SessionStateDisabled as exc:
        error = str(exc)
    else:
        error = ""
    return render(request, "testproject/disabled.html", {"error": error})


# The counter: parallel increments of one session, none lost.


@require_GET
@explains_off
def counter(request: HttpRequest) -> HttpResponse:
    # Stored now, so the parallel requests all carry the cookie of one existing session.
    value = request.session.setdefault("counter", 0)
    context = {"counter": value, "parallel": PARALLEL_REQUESTS}
    return render(request, "testproject/counter.html", context)


@require_POST
@explains_off
def increment(request: HttpRequest) -> JsonResponse:
    # A read-modify-write that Django's own engines race on; the session lock serializes it.
    request.session["counter"] = request.session.get("counter", 0) + 1
    return JsonResponse({"counter": request.session["counter"]})


@require_POST
@session_readonly
@explains_off
def read_only_increment(request: HttpRequest) -> JsonResponse:
    # The same write from a ReadOnly view is refused loudly, never dropped silently.
    try:
        request.session["counter"] = request.session.get("counter", 0) + 1
    except SessionStateReadOnly as exc:
        return JsonResponse({"error": str(exc)}, status=409)
    return JsonResponse({"counter": request.session["counter"]})


@require_GET
@session_readonly
@explains_off
def counter_value(request: HttpRequest) -> JsonResponse:
    # ReadOnly: reads without taking or waiting for the lock.
    return JsonResponse({"counter": request.session.get("counter", 0)})


@require_POST
@explains_off
def counter_reset(request: HttpRequest) -> JsonResponse:
    request.session["counter"] = 0
    return JsonResponse({"counter": 0})
