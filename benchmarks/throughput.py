"""HTTP throughput benchmark: wrk against gunicorn (2 sync workers), engines interleaved.

Every request reads and writes its session (``/increment/``, no extra work); ``none`` serves a
view without any session middleware (the floor). Two more floors (``--floors``) tell the cost
of waiting on another process from the cost of an engine: ``floor-asyncio-kv`` serves a view
without session middleware that does a session's work by hand on the key-value floor server (two
round trips, the payload decoded and encoded, the cookie set), the most any store outside the
process can reach on the machine; ``floor-kv-session`` is Django's ``SessionMiddleware`` over a
``SessionBase`` that does the same two round trips (``benchmarks.kvsession``), the most a Django
session engine outside the process can reach. ``floor-redis-py`` and ``floor-psycopg`` do the
work by hand on Redis and PostgreSQL (GET + SET; SELECT + upsert on a table of our tables' type):
each store's own ceiling. wrk runs 16 connections on 2 threads for ~5 s;
each wrk thread rotates over its own 64 sessions, so two requests of one session almost never
overlap and our engines' locks measure their cost, not contention. DESIGN.md §5 on this kind of
machine: no session ~4,300 req/s, django-redis ~1,850, ``db`` on PostgreSQL ~600-700; ours
should beat the Django engine they replace.

Every engine's gunicorn is started first; then ``--rounds`` rounds run wrk against each in turn
(the order shifting each round), and each engine's rate is divided by the no-session floor's of
the same round: reported as the median and range of those ratios.

Run: ``python -m benchmarks.throughput [--engines stateserver,...] [--duration 5] [--rounds 3]``
wrk comes from Debian (``apt-get install -y wrk``); the script installs it when it can.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks import engines as registry
from benchmarks.engines import OURS, Engine
from benchmarks.lost_updates import Client
from benchmarks.processes import gunicorn
from benchmarks.results import record

WRK_THREADS = 2
SESSIONS_PER_THREAD = 64
SHARED = "stateserver,sql-pg,redis"  # inproc needs one process; 2 workers would split it
BASELINES = "django-cache-redis,django-db-pg"
#: The floors besides "none" (which always runs): the key-value floor's two, the ceilings of
#: any store outside the process; the same work by hand on Redis and PostgreSQL, theirs.
FLOORS = ("floor-asyncio-kv", "floor-kv-session", "floor-redis-py", "floor-psycopg")
#: The paths not /increment/.
PATHS = {"none": "/ping/", **registry.BY_HAND}

LUA = """
local keys = {%(keys)s}
local per = %(per)d
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
local n = 0
function request()
  local key = keys[id * per + (n %% per) + 1]
  n = n + 1
  return wrk.format("GET", "%(path)s", {["Cookie"] = "sessionid=" .. key})
end
"""


def find_wrk() -> str | None:
    """Return wrk's path, installing it from Debian if possible."""
    wrk = shutil.which("wrk")
    if wrk is None and shutil.which("apt-get") and os.geteuid() == 0:
        print("installing wrk: apt-get install -y wrk", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True)
        wrk = shutil.which("wrk")
    return wrk


def parse(output: str) -> dict[str, Any]:
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    if rate is None:
        raise SystemExit(f"wrk printed no rate:\n{output}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    latency = re.search(r"Latency\s+(\S+)", output)
    return {
        "requests_per_second": float(rate.group(1)),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
        "latency_avg": latency.group(1) if latency else "",
    }


def script(port: int, path: str) -> str:
    """Create the sessions wrk rotates over; return the path of its Lua script."""
    keys = []
    for _ in range(WRK_THREADS * SESSIONS_PER_THREAD):
        client = Client(port)
        status, body = client.get(path)
        client.close()
        if status != 200 or not client.cookie:
            raise SystemExit(f"creating a session failed: {status} {body[:200]!r}")
        keys.append(f'"{client.cookie}"')
    handle, lua_path = tempfile.mkstemp(suffix=".lua", prefix="statemodes-wrk-")
    with os.fdopen(handle, "w") as lua:
        lua.write(LUA % {"keys": ", ".join(keys), "per": SESSIONS_PER_THREAD, "path": path})
    return lua_path


def prepared(stack: ExitStack, wrk: str, name: str, connections: int) -> list[str]:
    """Start gunicorn for ``name`` (and its sessions); return its wrk command without -d."""
    port = stack.enter_context(gunicorn(name, workers=2))
    command = [wrk, f"-t{WRK_THREADS}", f"-c{connections}"]
    path = PATHS.get(name, "/increment/")
    if name == "none":
        return [*command, f"http://127.0.0.1:{port}{path}"]
    lua = script(port, path)
    stack.callback(os.unlink, lua)
    return [*command, f"http://127.0.0.1:{port}{path}", "-s", lua]


def run_wrk(command: list[str], duration: float) -> dict[str, Any]:
    done = subprocess.run([*command, f"-d{duration}s"], capture_output=True, text=True, check=True)
    return parse(done.stdout)


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__)
    parser.add_argument("--engines", default=SHARED, help="our engines (default %(default)s)")
    parser.add_argument("--baselines", default=BASELINES, help="Django's (default %(default)s)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per engine and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--floors",
        default=",".join(FLOORS),
        help="floors besides none (default %(default)s; 'none' for no other)",
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--no-save", action="store_true", help="do not write results/latest.json")
    args = parser.parse_args(argv)
    floors = [] if args.floors == "none" else args.floors.split(",")
    unknown = sorted(set(floors) - set(FLOORS))
    if unknown:
        parser.error(f"no HTTP floor {unknown[0]!r}; there are: {', '.join(FLOORS)}")

    wrk = find_wrk()
    if wrk is None:
        print("skipped: wrk is not installed (apt-get install -y wrk)")
        return
    registry.setup_django()
    chosen: list[Engine] = registry.select(args.engines, OURS) + registry.select(
        args.baselines, "django"
    )
    chosen = registry.runnable(chosen + [registry.ENGINES[name] for name in floors])
    names = ["none", *(engine.name for engine in chosen)]
    rates: dict[str, list[float]] = {name: [] for name in names}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with registry.services(chosen), ExitStack() as stack:
        # Every server is up before the first round; the rounds then run A B C ..., the order
        # shifting each round, so drift on a shared machine hits every engine alike.
        commands = {name: prepared(stack, wrk, name, args.connections) for name in names}
        for command in commands.values():
            subprocess.run([*command, "-d1s"], capture_output=True, check=True)  # warm-up
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                row = run_wrk(commands[name], args.duration)
                rows[name].append(row)
                rates[name].append(row["requests_per_second"])
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    # Ratios are taken within each round, then summarised: median (min-max) over the rounds.
    ratio_to_floor = {
        name: [rate / floor for rate, floor in zip(rates[name], rates["none"], strict=True)]
        for name in names
    }
    print(
        f"\ngunicorn --workers 2 (sync), wrk -t{WRK_THREADS} -c{args.connections} "
        f"-d{args.duration}s, {args.rounds} interleaved rounds: median (min-max)"
    )
    print(f"{'engine':<22}{'req/s':>28}{'/ none (floor)':>26}  non-2xx")
    for name in names:
        bad = sum(row["non_2xx"] for row in rows[name])
        print(f"{name:<22}{spread(rates[name], 0):>28}{spread(ratio_to_floor[name]):>26}  {bad}")
    results = {
        name: {
            "requests_per_second": statistics.median(rates[name]),
            "rounds": rates[name],
            "ratio_to_none": ratio_to_floor[name],
            "latency_avg": rows[name][-1]["latency_avg"],
            "non_2xx": sum(row["non_2xx"] for row in rows[name]),
        }
        for name in names
    }
    data = {
        "server": "gunicorn --workers 2 (sync)",
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "engines": results,
    }
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    if not args.no_save:
        record("throughput", data)


if __name__ == "__main__":
    main()
