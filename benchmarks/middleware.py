"""Per-request cost of ``SessionStateMiddleware``, before and after a change to it.

Each request goes through Django's own handler (``BaseHandler.get_response``: the middleware
chain, URL resolution, ``process_view``, the view), built once with the middleware and once
without it. The middleware's cost is the first minus the second, measured in the same process
and round, on the InProc engine (no I/O, so the middleware's own work is what shows). Time is
the worker's CPU time (``time.process_time_ns``): on a shared machine, time spent by other
processes does not count, and the rounds spread far less than wall-clock ones.

Scenarios, each on a stored session whose cookie the request carries: a ReadWrite view that
increments a counter (load and lock, save and release), a ReadOnly view that reads it, an
unmarked view that never touches it, a Disabled view, and the ReadWrite view on the async
handler.

Each tree runs in its own interpreter (a worker); with ``--baseline`` the trees' workers
alternate, round after round, so drift on a shared machine hits them alike. Reported: the
median over rounds of the microseconds per request, and the range.

Run: ``python -m benchmarks.middleware [--baseline /other/checkout ...] [--tree PATH]
[--iterations N] [--rounds R] [--routes N]``; ``--routes 300`` puts 300 other routes before
the scenarios', as a larger site's URLconf has, so that a resolve costs what it costs there. Each worker runs this file with ``PYTHONPATH`` set to its tree
(and checks which ``django_statemodes`` it imported): ``PYTHONPATH=/other/checkout python -m
benchmarks.middleware`` run from this checkout would measure this checkout, since ``-m`` puts
the current directory first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
TREE = HERE.parent.parent  # the checkout this script belongs to
# Scenario: (URL, run on the async handler).
SCENARIOS = {
    "read-write": ("/read-write/", False),
    "read-only": ("/read-only/", False),
    "untouched": ("/untouched/", False),
    "disabled": ("/disabled/", False),
    "async read-write": ("/async-read-write/", True),
}
MIDDLEWARE = "django_statemodes.middleware.SessionStateMiddleware"
# Django's own pair, for the same ReadWrite view: its middleware on its cache engine, on
# LocMemCache (the default cache), the in-process engine nearest to InProc.
DJANGO_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
DJANGO_ENGINE = "django.contrib.sessions.backends.cache"
DJANGO = "django read-write"
FLOOR = "floor"
#: What a worker reports besides the scenarios: Django's pair, and the handler alone.
MEASURED = [*SCENARIOS, DJANGO, FLOOR]


# The worker: one tree, one interpreter.


def configure(routes: int = 0) -> None:
    from django.conf import settings

    settings.configure(
        SECRET_KEY="benchmarks-not-a-secret",
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        USE_TZ=True,
        ROOT_URLCONF="statemodes_bench_urls",
        INSTALLED_APPS=["django_statemodes"],
        MIDDLEWARE=[MIDDLEWARE],
        SESSION_ENGINE="django_statemodes.backends.inproc",
        LOGGING_CONFIG=None,
    )
    import django

    django.setup()
    sys.modules["statemodes_bench_urls"] = urls(routes)


def urls(routes: int = 0) -> types.ModuleType:
    """The scenarios' URLconf, after ``routes`` other routes that every resolve walks past."""
    from django.http import HttpRequest, HttpResponse
    from django.urls import path

    from django_statemodes.decorators import session_disabled, session_readonly

    def read_write(request: HttpRequest) -> HttpResponse:
        request.session["counter"] = request.session.get("counter", 0) + 1
        return HttpResponse("ok")

    @session_readonly
    def read_only(request: HttpRequest) -> HttpResponse:
        return HttpResponse(str(request.session.get("counter")))

    def untouched(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    @session_disabled
    def disabled(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    async def async_read_write(request: HttpRequest) -> HttpResponse:
        counter = await request.session.aget("counter", 0)
        await request.session.aset("counter", counter + 1)
        return HttpResponse("ok")

    async def async_untouched(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    module = types.ModuleType("statemodes_bench_urls")
    padding = [path(f"page-{n}/<int:pk>/", untouched) for n in range(routes)]
    module.urlpatterns = [  # type: ignore[attr-defined]
        *padding,
        path("read-write/", read_write),
        path("read-only/", read_only),
        path("untouched/", untouched),
        path("disabled/", disabled),
        path("async-read-write/", async_read_write),
        path("async-untouched/", async_untouched),
    ]
    return module


def handler(middleware: list[str], *, is_async: bool = False) -> Any:
    from django.conf import settings
    from django.core.handlers.base import BaseHandler

    settings.MIDDLEWARE = middleware
    built = BaseHandler()
    built.load_middleware(is_async=is_async)
    return built


def django_handler() -> Any:
    """The handler with Django's middleware on its cache engine (read at the middleware's init)."""
    from django.conf import settings

    ours = settings.SESSION_ENGINE
    settings.SESSION_ENGINE = DJANGO_ENGINE
    try:
        return handler([DJANGO_MIDDLEWARE])
    finally:
        settings.SESSION_ENGINE = ours


def django_session_key() -> str:
    from django.contrib.sessions.backends.cache import SessionStore

    session = SessionStore()
    session["counter"] = 0
    session.save()
    assert session.session_key is not None
    return session.session_key


def stored_session_key() -> str:
    from django_statemodes.backends.inproc import SessionStore

    session = SessionStore(access="ReadWrite")
    session["counter"] = 0
    session.finish(save=True)
    assert session.session_key is not None
    return session.session_key


def sync_ns(handler_: Any, url: str, key: str, iterations: int) -> float:
    from django.conf import settings
    from django.test import RequestFactory

    factory = RequestFactory()
    factory.cookies[settings.SESSION_COOKIE_NAME] = key
    started = time.process_time_ns()
    for _ in range(iterations):
        handler_.get_response(factory.get(url))
    return time.process_time_ns() - started


def async_ns(handler_: Any, url: str, key: str, iterations: int) -> float:
    from django.conf import settings
    from django.test import AsyncRequestFactory

    factory = AsyncRequestFactory()
    factory.cookies[settings.SESSION_COOKIE_NAME] = key

    async def requests() -> float:
        started = time.process_time_ns()
        for _ in range(iterations):
            await handler_.get_response_async(factory.get(url))
        return time.process_time_ns() - started

    return asyncio.run(requests())


def worker(iterations: int, routes: int) -> dict[str, Any]:
    """Time every scenario once in this interpreter; return microseconds per request."""
    configure(routes)
    import django_statemodes

    key = stored_session_key()
    ours, floor = handler([MIDDLEWARE]), handler([])
    a_ours, a_floor = handler([MIDDLEWARE], is_async=True), handler([], is_async=True)
    results: dict[str, float] = {}
    for name, (url, is_async) in SCENARIOS.items():
        # Without the middleware there is no request.session: the floor is the view that does
        # nothing, the same for every scenario of a handler (an async one on the async
        # handler, which would run a sync view in a thread).
        if is_async:
            with_mw = async_ns(a_ours, url, key, iterations)
            without = async_ns(a_floor, "/async-untouched/", key, iterations)
        else:
            with_mw = sync_ns(ours, url, key, iterations)
            without = sync_ns(floor, "/untouched/", key, iterations)
        results[name] = (with_mw - without) / iterations / 1000
    with_django = sync_ns(django_handler(), "/read-write/", django_session_key(), iterations)
    without = sync_ns(floor, "/untouched/", key, iterations)
    results[DJANGO] = (with_django - without) / iterations / 1000
    results[FLOOR] = without / iterations / 1000
    return {"package": str(Path(django_statemodes.__file__).parent), "us": results}


# The coordinator: alternate the trees' workers, round after round.


def run_worker(tree: Path, iterations: int, routes: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    # Run as a file, not with -m: sys.path[0] is then this script's folder, not a checkout.
    result = subprocess.run(
        [
            sys.executable,
            str(HERE),
            "--worker",
            "--iterations",
            str(iterations),
            "--routes",
            str(routes),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    expected = tree.resolve() / "django_statemodes"
    if Path(report["package"]).resolve() != expected:
        raise SystemExit(f"{tree}: the worker imported {report['package']}, not {expected}")
    return report


def label(tree: Path) -> str:
    return "this tree" if tree.resolve() == TREE else tree.resolve().name


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="another checkout to compare with (repeatable)",
    )
    parser.add_argument(
        "--tree", type=Path, default=TREE, help="the checkout measured (default: this one)"
    )
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--routes",
        type=int,
        default=0,
        help="other routes before the scenarios' in the URLconf (a larger site's resolve)",
    )
    parser.add_argument("--json", type=Path, help="also write the rounds' figures to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        # This script's folder holds modules (settings, engines) that must not shadow others.
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE.parent]
        print(json.dumps(worker(args.iterations, args.routes)))
        return

    trees = {label(path): path for path in [*args.baseline, args.tree]}
    samples: dict[str, dict[str, list[float]]] = {t: {s: [] for s in MEASURED} for t in trees}
    for round_ in range(args.rounds):
        # Alternate which tree goes first, so neither always runs on a warmer machine.
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for tree in order:
            report = run_worker(trees[tree], args.iterations, args.routes)
            for name in MEASURED:
                samples[tree][name].append(report["us"][name])
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    labels = list(trees)
    header = f"{'µs/request':<20}" + "".join(f"{t:>24}" for t in labels)
    if len(labels) > 1:
        header += f"{'last/first':>12}"
    print(
        f"SessionStateMiddleware on InProc: µs per request, handler with it minus without it; "
        f"median (min-max) of {args.rounds} rounds of {args.iterations} requests, "
        f"{args.routes} other routes"
    )
    print(header)
    for name in MEASURED:
        line = f"{name:<20}" + "".join(f"{spread(samples[t][name]):>24}" for t in labels)
        if len(labels) > 1:
            first, last = (statistics.median(samples[t][name]) for t in (labels[0], labels[-1]))
            line += f"{last / first:12.2f}"
        print(line)

    # The whole request, handler included, against Django's pair on the same view and round:
    # what a site sees when it swaps SessionMiddleware for ours on an in-process store.
    print(
        "\nread-write, whole request (handler + middleware): ours / Django's cache on LocMemCache"
    )
    whole: dict[str, list[float]] = {}
    for tree in labels:
        whole[tree] = ratios = [
            (floor + ours) / (floor + django)
            for ours, django, floor in zip(
                samples[tree]["read-write"],
                samples[tree][DJANGO],
                samples[tree][FLOOR],
                strict=True,
            )
        ]
        print(f"{tree:<20}{spread(ratios):>24}")
    if args.json:
        report = {"routes": args.routes, "us": samples, "whole_request_ratio": whole}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
