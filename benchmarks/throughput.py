"""HTTP throughput benchmark: wrk against gunicorn (2 sync workers), one engine at a time.

Every request reads and writes its session (``/increment/``, no extra work); ``none`` serves a
view without any session middleware (the floor). wrk runs 16 connections on 2 threads for ~5 s;
each wrk thread rotates over its own 64 sessions, so two requests of one session almost never
overlap and our engines' locks measure their cost, not contention. DESIGN.md §5 on this kind of
machine: no session ~4,300 req/s, django-redis ~1,850, ``db`` on PostgreSQL ~600-700; ours
should beat the Django engine they replace.

Run: ``python -m benchmarks.throughput [--engines stateserver,...] [--duration 5]``
wrk comes from Debian (``apt-get install -y wrk``); the script installs it when it can.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
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
  return wrk.format("GET", "/increment/", {["Cookie"] = "sessionid=" .. key})
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


def script(port: int) -> str:
    """Create the sessions wrk rotates over; return the path of its Lua script."""
    keys = []
    for _ in range(WRK_THREADS * SESSIONS_PER_THREAD):
        client = Client(port)
        status, body = client.get("/increment/")
        client.close()
        if status != 200 or not client.cookie:
            raise SystemExit(f"creating a session failed: {status} {body[:200]!r}")
        keys.append(f'"{client.cookie}"')
    handle, path = tempfile.mkstemp(suffix=".lua", prefix="statemodes-wrk-")
    with os.fdopen(handle, "w") as lua:
        lua.write(LUA % {"keys": ", ".join(keys), "per": SESSIONS_PER_THREAD})
    return path


def run_engine(wrk: str, name: str, duration: float, connections: int) -> dict[str, Any]:
    with gunicorn(name, workers=2) as port:
        if name == "none":
            lua, target = None, f"http://127.0.0.1:{port}/ping/"
        else:
            lua, target = script(port), f"http://127.0.0.1:{port}/increment/"
        command = [wrk, f"-t{WRK_THREADS}", f"-c{connections}", target]
        if lua:
            command += ["-s", lua]
        try:
            subprocess.run([*command, "-d1s"], capture_output=True, check=True)  # warm-up
            done = subprocess.run(
                [*command, f"-d{duration}s"], capture_output=True, text=True, check=True
            )
        finally:
            if lua:
                os.unlink(lua)
    return {"command": " ".join(command[:4]) + f" -d{duration}s", **parse(done.stdout)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__)
    parser.add_argument("--engines", default=SHARED, help="our engines (default %(default)s)")
    parser.add_argument("--baselines", default=BASELINES, help="Django's (default %(default)s)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per engine")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-save", action="store_true", help="do not write results/latest.json")
    args = parser.parse_args(argv)

    wrk = find_wrk()
    if wrk is None:
        print("skipped: wrk is not installed (apt-get install -y wrk)")
        return
    registry.setup_django()
    chosen: list[Engine] = registry.select(args.engines, OURS) + registry.select(
        args.baselines, "django"
    )
    chosen = registry.runnable(chosen)
    results: dict[str, dict[str, Any]] = {}
    with registry.services(chosen):
        for name in ["none", *(engine.name for engine in chosen)]:
            results[name] = row = run_engine(wrk, name, args.duration, args.connections)
            print(
                f"{name:<22}{row['requests_per_second']:>10.0f} req/s   latency avg "
                f"{row['latency_avg']:>8}   non-2xx {row['non_2xx']}",
                flush=True,
            )
    if not args.no_save:
        record(
            "throughput",
            {
                "server": "gunicorn --workers 2 (sync)",
                "connections": args.connections,
                "duration_s": args.duration,
                "engines": results,
            },
        )


if __name__ == "__main__":
    main()
