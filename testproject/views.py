"""The demo pages: the scenarios of ASP.NET's session-state walkthroughs, one view each."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import wraps
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.backends.cache import SessionStore as DjangoCacheSession
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import rotate_token
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.functional import SimpleLazyObject
from django.views.decorators.http import require_GET, require_POST

from django_statemodes.conf import conf
from django_statemodes.cookieless_handler import url_state
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

# What an increment spends between reading the counter and writing it back, as a real view does
# some work between its reads and its writes: the window in which Django's own engine loses the
# updates of concurrent requests. Both engines' increments spend it.
VIEW_WORK_SECONDS = 0.05

# The counter page's second session, in Django's own cache engine: its key travels in this
# header (not a cookie), so that the comparison runs the same in the cookieless modes.
DJANGO_SESSION_HEADER = "X-Django-Session"
DJANGO_SESSION_KEY = re.compile(r"[a-z0-9]{32}")

# What each of lock_stats' counters counts, for the status page.
LOCK_COUNTERS = {
    "acquired": "requests that took a session's exclusive lock (ReadWrite views that loaded it)",
    "waited": "of those, requests that found the lock held and waited for its release",
    "wait_seconds": "seconds spent waiting for locks, all requests together",
    "stolen": "locks broken because their holder kept them past STATEMODES_LOCK_TIMEOUT",
    "refused_writes": (
        "saves refused because the request's own lock had been broken meanwhile "
        "(not the ReadOnly view's refused writes, which raise in the view)"
    ),
    "queue_full": (
        "requests answered 503 because too many already waited for one session "
        "(STATEMODES_LOCK_QUEUE_LIMIT) or in this process (STATEMODES_LOCK_WAITING_THREADS)"
    ),
    "peak_serving": "the most requests this process has served at once",
}

# The favicon: inline in every page (no request, no session), and at /favicon.ico for clients
# that ask anyway.
FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#2b3a55"/>'
    '<path d="M5 7V5a3 3 0 0 1 6 0v2" stroke="#fff" stroke-width="1.6" fill="none"/>'
    '<rect x="3.5" y="7" width="9" height="6.5" rx="1" fill="#fff"/></svg>'
)

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


@dataclass
class Visitor:
    """Who the navigation bar greets: ``known`` is False where this page may not read the
    session (a ``@session_disabled`` view, or Off mode)."""

    known: bool
    name: str | None = None


def visitor(request: HttpRequest) -> Visitor:
    try:
        return Visitor(known=True, name=request.session.get("user_name"))
    except SessionStateDisabled:
        return Visitor(known=False)


def demo_context(request: HttpRequest) -> dict[str, Any]:
    """Template context for every page: the mode in use, whether this request is cookieless, and
    the visitor, read from the session only when the navigation bar is rendered."""
    return {
        "demo_engine": settings.SESSION_ENGINE,
        "demo_mode": MODE_NAMES.get(settings.SESSION_ENGINE, "Custom"),
        "demo_cookieless": conf.STATEMODES_COOKIELESS,
        # This request's key travels in the URL (not merely a cookieless-capable site).
        "demo_is_cookieless": url_state(request) is not None,
        "demo_visitor": SimpleLazyObject(lambda: visitor(request)),
        "favicon_svg": FAVICON_SVG,
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


@explains_off
def logout(request: HttpRequest) -> HttpResponse:
    # A GET (the navigation bar's link) only asks: a link must not change state.
    if request.method != "POST":
        return render(request, "testproject/logout.html")
    # Session.Abandon(): the data goes (session_end is sent) and the key is not reused.
    request.session.flush()
    return redirect("login")


@session_disabled
def favicon(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(FAVICON_SVG, content_type="image/svg+xml")
    response["Cache-Control"] = "public, max-age=86400"
    return response


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
    counters = lock_stats.as_dict()
    context: dict[str, Any] = {
        "lock_stats": [(name, LOCK_COUNTERS[name], counters[name]) for name in LOCK_COUNTERS],
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


# The counter: parallel increments of one session, none lost here; the same increments of a
# session in Django's own cache engine, beside it, lose updates.


def add_one(session: SessionBase) -> int:
    """The increment both engines run: read, the view's work, write."""
    value = int(session.get("counter", 0)) + 1
    time.sleep(VIEW_WORK_SECONDS)
    session["counter"] = value
    return value


def django_session(request: HttpRequest) -> DjangoCacheSession | None:
    """The counter page's session in Django's cache engine, by the key in the header."""
    key = request.headers.get(DJANGO_SESSION_HEADER, "")
    if not DJANGO_SESSION_KEY.fullmatch(key):  # Django's own keys: 32 of [a-z0-9]
        return None
    store = DjangoCacheSession(key)
    return store if store.exists(key) else None


@require_GET
@explains_off
def counter(request: HttpRequest) -> HttpResponse:
    # Stored now, so the parallel requests all carry the key of one existing session.
    value = request.session.setdefault("counter", 0)
    # And a session of Django's own engine (SESSION_CACHE_ALIAS), for the same increments.
    theirs = DjangoCacheSession()
    theirs["counter"] = 0
    theirs.save()
    context = {
        "counter": value,
        "parallel": PARALLEL_REQUESTS,
        "django_session": theirs.session_key,
        "django_header": DJANGO_SESSION_HEADER,
        "work_ms": round(VIEW_WORK_SECONDS * 1000),
    }
    return render(request, "testproject/counter.html", context)


@require_POST
@explains_off
def increment(request: HttpRequest) -> JsonResponse:
    # A read-modify-write that Django's own engines race on; the session lock serializes it.
    return JsonResponse({"counter": add_one(request.session)})


@require_POST
@session_readonly  # our session is only read (the CSRF check), never locked
def django_increment(request: HttpRequest) -> JsonResponse:
    # The same increment on Django's cache engine, saved as SessionMiddleware saves after the
    # view: nothing stops two requests from reading the same value and both writing value + 1.
    session = django_session(request)
    if session is None:
        return JsonResponse({"error": "No such session of Django's engine: reload."}, status=404)
    value = add_one(session)
    session.save()
    return JsonResponse({"counter": value})


@require_GET
@session_disabled
def django_counter_value(request: HttpRequest) -> JsonResponse:
    session = django_session(request)
    if session is None:
        return JsonResponse({"error": "No such session of Django's engine: reload."}, status=404)
    return JsonResponse({"counter": session.get("counter", 0)})


@require_POST
@session_readonly
def django_counter_reset(request: HttpRequest) -> JsonResponse:
    session = django_session(request)
    if session is None:
        return JsonResponse({"error": "No such session of Django's engine: reload."}, status=404)
    session["counter"] = 0
    session.save()
    return JsonResponse({"counter": 0})


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
