"""Lost-update benchmark through a real server: many clients increment one session at once.

gunicorn serves ``benchmarks.app`` (``--workers 2 --threads 4`` for shared stores, ``--workers 1
--threads 8`` for stores private to one process: InProc and LocMemCache). One request creates
the session (counter 1); then 8 clients send 50 increments each, concurrently, with the same
session cookie; each increment reads the counter, works 2 ms, writes it plus one. Every
increment answered 200 must be in the final counter: what is missing was lost. DESIGN.md §5:
ours lose none; Django's engines, which do not lock, lose 25-80 %.

Run: ``python -m benchmarks.lost_updates [--engines inproc,django-cache-redis,...]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
from typing import Any

from benchmarks import engines as registry
from benchmarks.engines import DJANGO, OURS, Engine
from benchmarks.processes import gunicorn
from benchmarks.results import record

DJANGO_ENGINES = "django-cache-locmem,django-cache-redis,django-db-pg,django-db-sqlite"


class Client:
    """One keep-alive HTTP connection carrying one session cookie."""

    def __init__(self, port: int, cookie: str | None = None) -> None:
        self.port = port
        self.cookie = cookie
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path: str) -> tuple[int, bytes]:
        headers = {"Cookie": f"sessionid={self.cookie}"} if self.cookie else {}
        try:
            self.conn.request("GET", path, headers=headers)
            response = self.conn.getresponse()
        except (http.client.HTTPException, OSError):
            self.conn.close()  # the server closed a kept-alive connection: once more
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            self.conn.request("GET", path, headers=headers)
            response = self.conn.getresponse()
        body = response.read()
        cookie = response.getheader("Set-Cookie") or ""
        if "sessionid=" in cookie:
            self.cookie = cookie.split("sessionid=", 1)[1].split(";", 1)[0]
        return response.status, body

    def close(self) -> None:
        self.conn.close()


def hammer(port: int, clients: int, increments: int, work_ms: float) -> dict[str, Any]:
    starter = Client(port)
    status, body = starter.get("/increment/")
    if status != 200:
        raise SystemExit(f"creating the session failed: {status} {body[:200]!r}")
    cookie = starter.cookie
    starter.close()
    answered = [0] * clients
    errors: list[str] = []

    def run(index: int) -> None:
        client = Client(port, cookie)
        for _ in range(increments):
            status, body = client.get(f"/increment/?work={work_ms}")
            if status == 200:
                answered[index] += 1
            else:
                errors.append(f"{status}: {body[:120]!r}")
        client.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader = Client(port, cookie)
    status, body = reader.get("/read/")
    reader.close()
    if status != 200:
        raise SystemExit(f"reading the counter failed: {status} {body[:200]!r}")
    final = json.loads(body)["counter"]
    ok = sum(answered)
    lost = ok - (final - 1)
    return {
        "sent": clients * increments,
        "answered_200": ok,
        "errors": len(errors),
        "error_sample": errors[:3],
        "final_counter": final,
        "lost": lost,
        "lost_percent": 100 * lost / ok if ok else 0.0,
    }


def run_engine(engine: Engine, clients: int, increments: int, work_ms: float) -> dict[str, Any]:
    workers, threads = (1, 8) if engine.one_process else (2, 4)
    with gunicorn(engine.name, workers=workers, threads=threads) as port:
        result = hammer(port, clients, increments, work_ms)
    return {"server": f"gunicorn --workers {workers} --threads {threads}", **result}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lost_updates", description=__doc__)
    parser.add_argument(
        "--engines", help="our engines (default all): " + ",".join(registry.names(OURS))
    )
    parser.add_argument("--baselines", default=DJANGO_ENGINES, help="Django's engines")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--increments", type=int, default=50, help="per client")
    parser.add_argument("--work-ms", type=float, default=2.0, help="the view's work per request")
    parser.add_argument("--no-save", action="store_true", help="do not write results/latest.json")
    args = parser.parse_args(argv)

    registry.setup_django()
    chosen = registry.select(args.engines, OURS) + registry.select(args.baselines, DJANGO)
    chosen = registry.runnable(chosen)
    results: dict[str, dict[str, Any]] = {}
    with registry.services(chosen):
        for engine in chosen:
            results[engine.name] = run_engine(engine, args.clients, args.increments, args.work_ms)
            row = results[engine.name]
            print(
                f"{engine.name:<22} {row['server']:<34} answered {row['answered_200']:>4}"
                f"  final {row['final_counter']:>4}  lost {row['lost']:>4}"
                f" ({row['lost_percent']:.0f} %)  errors {row['errors']}",
                flush=True,
            )
    if not args.no_save:
        record(
            "lost_updates",
            {
                "clients": args.clients,
                "increments": args.increments,
                "work_ms": args.work_ms,
                "engines": results,
            },
        )


if __name__ == "__main__":
    main()
