"""ASGI throughput: every engine under ``uvicorn --workers 2`` with an async view, beside Django's
``cache`` engine on django-redis under the same server.

The view loads the session, changes it and saves it through Django's async session API
(``aget``/``aset``; ~1 KB stored, as in the cycle benchmark). Ours run under
``SessionStateMiddleware``, Django's under its own ``SessionMiddleware``, as their users run
them; engines are configured by ``benchmarks.engines``, as for gunicorn. ``none`` is the floor: the
same server and client, no session middleware.

One uvicorn per engine, all started first; then interleaved rounds (each round runs every
engine in turn, the order rotating), so drift on a shared machine hits all of them alike. A
round is N requests from a bounded asyncio client: C keep-alive connections, each rotating over
its own sessions, so two requests of one session never overlap (the lock's cost, not
contention). Every answer's counter must be its session's previous one plus one: a lost write
stops the run. Reported: req/s, median (min-max) over rounds, and the ratio to Django's cache
engine, the median (min-max) of the per-round ratios. wrk is not used: the client must read
each answer's counter, and wrk is not installed here.

InProc keeps sessions in one process: with ``--engines inproc`` it runs under one worker.

Run: ``python -m benchmarks.asgi [--engines stateserver,...] [--requests N] [--rounds R]``
uvicorn imports ``make_application`` from this module (``--factory``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import path

from benchmarks import engines as registry
from benchmarks.engines import DJANGO, OURS, Engine
from benchmarks.middleware import spread
from benchmarks.processes import free_port, python_module, running
from benchmarks.results import record

SHARED = "stateserver,sql-pg,sql-sqlite,redis"
BASELINE = "django-cache-redis"
FLOOR = "none"
MODULE = "benchmarks.asgi"  # also when run as __main__: uvicorn's workers import it by name
PROFILE = {"bio": "x" * 900, "theme": "dark"}  # ~1 KB, as in the cycle benchmark


# The site: benchmarks.app's settings and engines, with this module's async views.


async def increment(request: HttpRequest) -> JsonResponse:
    """Load, modify, save: one read-modify-write of the session through the async API."""
    session = request.session
    counter = await session.aget("counter", 0)
    await session.aset("counter", counter + 1)
    if not await session.ahas_key("profile"):
        await session.aset("profile", PROFILE)
    return JsonResponse({"counter": counter + 1})


async def ping(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [path("increment/", increment), path("ping/", ping)]


def make_application() -> Any:
    """uvicorn's factory: ``benchmarks.app.settings`` (the engine from the environment), this
    module as the URLconf."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.app.settings")
    import django
    from django.conf import settings
    from django.core.asgi import get_asgi_application

    django.setup(set_prefix=False)
    settings.ROOT_URLCONF = MODULE
    return get_asgi_application()


@contextmanager
def uvicorn(engine: str, workers: int) -> Iterator[int]:
    """Serve ``engine`` under ``uvicorn --workers N`` on a free port; yield the port."""
    port = free_port()
    command = python_module(
        "uvicorn", "--factory", f"{MODULE}:make_application",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--log-level", "warning", "--no-access-log", "--lifespan", "off",
        # Rounds of other engines leave a connection idle for seconds: keep it open.
        "--timeout-keep-alive", "600",
    )  # fmt: skip
    env = {"DJANGO_SETTINGS_MODULE": "benchmarks.app.settings", "STATEMODES_BENCH_ENGINE": engine}
    with running(command, port, env=env):
        yield port


# The client: keep-alive HTTP/1.1 on asyncio streams, one session cookie per request.


class Connection:
    """One keep-alive connection; ``get`` returns (status, body, Set-Cookie session key)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, target: str, key: str | None) -> tuple[int, bytes, str | None]:
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        cookie = f"Cookie: sessionid={key}\r\n" if key else ""
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{cookie}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length, new_key, close, chunked = 0, None, False, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and value.lower() == "chunked":
                chunked = True  # no Content-Length: Django sets it only through middleware
            elif name == "set-cookie" and value.startswith("sessionid="):
                new_key = value.split("=", 1)[1].split(";", 1)[0]
            elif name == "connection" and value.lower() == "close":
                close = True
        body = await self._chunked(reader) if chunked else await reader.readexactly(length)
        if close:
            self.close()
        return status, body, new_key

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")  # the empty trailer
        return body

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


class Load:
    """C connections, each rotating over its own sessions; checks every counter it gets."""

    def __init__(self, port: int, connections: int, sessions: int) -> None:
        self.port = port
        self.connections = [Connection(port) for _ in range(connections)]
        self.sessions = sessions
        self.keys: list[list[str]] = [[] for _ in range(connections)]
        self.counters: dict[str, int] = {}
        self.non_200 = 0
        self.sample: list[str] = []

    async def prepare(self, session: bool) -> None:
        """Create every connection's sessions (counter 1)."""
        if not session:
            return
        for conn, keys in zip(self.connections, self.keys, strict=True):
            for _ in range(self.sessions):
                status, body, key = await conn.get("/increment/", None)
                if status != 200 or key is None:
                    raise SystemExit(f"creating a session failed: {status} {body[:200]!r}")
                keys.append(key)
                self.counters[key] = 1

    async def run(self, requests: int, target: str) -> float:
        """Send ``requests`` requests; return the seconds they took."""
        each = [requests // len(self.connections)] * len(self.connections)
        for index in range(requests % len(self.connections)):
            each[index] += 1

        async def client(index: int) -> None:
            conn, keys = self.connections[index], self.keys[index]
            for n in range(each[index]):
                key = keys[n % len(keys)] if keys else None
                status, body, _ = await conn.get(target, key)
                if status != 200:
                    self.non_200 += 1
                    if len(self.sample) < 3:
                        self.sample.append(f"{status} {body[:200]!r}")
                    continue
                if key is not None:
                    value = json.loads(body)["counter"]
                    if value != self.counters[key] + 1:
                        raise SystemExit(
                            f"session {key}: counter {value} after {self.counters[key]}: "
                            "a write was lost"
                        )
                    self.counters[key] = value

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(len(self.connections))))
        return time.perf_counter() - started

    def close(self) -> None:
        for conn in self.connections:
            conn.close()


def workers_for(engine: Engine | None, workers: int) -> int:
    return 1 if engine is not None and engine.one_process else workers


async def measure(
    ports: dict[str, int], requests: int, rounds: int, connections: int, sessions: int
) -> tuple[dict[str, list[float]], dict[str, int], dict[str, list[str]]]:
    """Interleaved rounds over every engine's server; req/s per round per engine."""
    loads = {name: Load(port, connections, sessions) for name, port in ports.items()}
    for name, load in loads.items():
        await load.prepare(session=name != FLOOR)
        await load.run(max(connections, requests // 4), target(name))  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in ports}
    names = list(ports)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = await loads[name].run(requests, target(name))
            rates[name].append(requests / seconds)
        print(f"round {round_ + 1}/{rounds} done", file=sys.stderr, flush=True)
    for load in loads.values():
        load.close()
    return (
        rates,
        {name: load.non_200 for name, load in loads.items()},
        {name: load.sample for name, load in loads.items()},
    )


def target(name: str) -> str:
    return "/ping/" if name == FLOOR else "/increment/"


def rate_spread(values: list[float]) -> str:
    """req/s as median (min-max), whole requests: ``benchmarks.middleware.spread`` for rates."""
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def ratio_spread(rates: dict[str, list[float]], name: str) -> list[float]:
    """Per-round ratios of ``name``'s req/s to the baseline's."""
    return [mine / base for mine, base in zip(rates[name], rates[BASELINE], strict=True)]


def table(
    rates: dict[str, list[float]], non_200: dict[str, int], labels: dict[str, str]
) -> list[str]:
    """The Markdown table of docs/benchmarks.md."""
    lines = [
        f"| engine | req/s, median (min-max) | / `{BASELINE}` | non-200 |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, values in rates.items():
        ratio = spread(ratio_spread(rates, name)).strip() if BASELINE in rates else "-"
        lines.append(
            f"| `{name}` ({labels[name]}) | {rate_spread(values)} | {ratio} | {non_200[name]} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.asgi", description=__doc__)
    parser.add_argument("--engines", default=SHARED, help="our engines (default %(default)s)")
    parser.add_argument("--baselines", default=BASELINE, help="Django's (default %(default)s)")
    parser.add_argument("--requests", type=int, default=2000, help="per engine and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16, help="concurrent clients")
    parser.add_argument("--sessions", type=int, default=8, help="sessions per connection")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--no-floor", action="store_true", help="skip the no-session floor")
    parser.add_argument("--no-save", action="store_true", help="do not write results/latest.json")
    args = parser.parse_args(argv)

    registry.setup_django()
    chosen = registry.select(args.engines, OURS) + registry.select(args.baselines, DJANGO)
    chosen = registry.runnable(chosen)
    engines = {engine.name: engine for engine in chosen}
    labels = {name: engine.label for name, engine in engines.items()}
    names: list[str] = ([] if args.no_floor else [FLOOR]) + list(engines)
    labels[FLOOR] = "no session middleware"
    with registry.services(chosen), ExitStack() as stack:
        ports = {
            name: stack.enter_context(uvicorn(name, workers_for(engines.get(name), args.workers)))
            for name in names
        }
        rates, non_200, samples = asyncio.run(
            measure(ports, args.requests, args.rounds, args.connections, args.sessions)
        )
    workers = {name: workers_for(engines.get(name), args.workers) for name in names}
    print(
        f"uvicorn --workers {args.workers}, async view (aget/aset); {args.rounds} rounds of "
        f"{args.requests} requests, {args.connections} connections; req/s median (min-max)"
    )
    print(f"{'engine':<22}{'req/s':>26}{'/ ' + BASELINE:>30}{'non-200':>9}")
    for name, values in rates.items():
        ratio = spread(ratio_spread(rates, name)) if BASELINE in rates else "-"
        note = "" if workers[name] == args.workers else f"  ({workers[name]} worker)"
        print(f"{name:<22}{rate_spread(values):>26}{ratio:>30}{non_200[name]:>9}{note}")
        for sample in samples[name]:
            print(f"    {sample}")
    print()
    print("\n".join(table(rates, non_200, labels)))
    if not args.no_save:
        record(
            "asgi",
            {
                "server": f"uvicorn --workers {args.workers}",
                "requests": args.requests,
                "rounds": args.rounds,
                "connections": args.connections,
                "engines": {
                    name: {
                        "label": labels[name],
                        "workers": workers[name],
                        "requests_per_second": values,
                        "median": statistics.median(values),
                        "non_200": non_200[name],
                        **(
                            {"ratio_to_baseline": statistics.median(ratio_spread(rates, name))}
                            if BASELINE in rates
                            else {}
                        ),
                    }
                    for name, values in rates.items()
                },
            },
        )


if __name__ == "__main__":
    main()
