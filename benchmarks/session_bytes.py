"""Memory per stored session: the Redis provider beside Django's cache on django-redis, and
InProc beside Django's cache on LocMemCache. Sessions of ~1 KB (the cycle benchmark's shop
session).

Redis: a private ``redis-server`` on a free port (nothing else in it), emptied before each
engine; ``used_memory`` after ``--sessions`` sessions minus before, per session (the provider's
expiry index and every other key it keeps included). The provider is measured twice: on Redis's
defaults, and with ``hash-max-listpack-value`` above the payload's size. In-process:
``tracemalloc``, the memory still allocated after the sessions are stored and garbage is
collected, minus before, per session (LocMemCache given room for every session: no culling).

Run: ``python -m benchmarks.session_bytes [--sessions 10000] [--json PATH]``
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import shutil
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import engines as registry
from benchmarks.cycle import payload, store_new
from benchmarks.engines import DJANGO, OURS, Engine
from benchmarks.processes import free_port, running

PRIVATE = "redis-private"
#: ``hash-max-listpack-value`` of the second measurement of the provider: above a 1 KB payload.
LISTPACK_VALUE = 2048
OURS_REDIS = Engine(
    "bytes-redis",
    OURS,
    "Custom: RedisProvider",
    "django_statemodes.backends.custom",
    imports=("django_statemodes.providers.redis",),
    settings=lambda: {
        "STATEMODES_CUSTOM_PROVIDER": registry.REDIS_PROVIDER,
        "STATEMODES_REDIS_ALIAS": PRIVATE,
    },
)
DJANGO_REDIS = Engine(
    "bytes-django-cache-redis",
    DJANGO,
    "Django cache (django-redis)",
    "django.contrib.sessions.backends.cache",
    settings=lambda: {"SESSION_CACHE_ALIAS": PRIVATE},
)
OURS_INPROC = Engine("bytes-inproc", OURS, "InProc", "django_statemodes.backends.inproc")
DJANGO_LOCMEM = Engine(
    "bytes-django-cache-locmem",
    DJANGO,
    "Django cache (LocMemCache)",
    "django.contrib.sessions.backends.cache",
    settings=lambda: {"SESSION_CACHE_ALIAS": "locmem-large"},
)


def store(engine: Engine, count: int) -> None:
    registry.use(engine)
    store_class = registry.store_class(engine)
    for _ in range(count):
        # Objects of its own, as a real session has (InProc keeps them live).
        store_new(engine, store_class, payload())


def redis_bytes(count: int) -> dict[str, float]:
    import redis
    from django.conf import settings

    port = free_port()
    folder = tempfile.mkdtemp(prefix="statemodes-bench-redis-")
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", folder, "--logfile", "redis.log"]
    result = {}
    try:
        with running(command, port):
            # In place: Django's cache handler keeps the CACHES dict it read first.
            settings.CACHES[PRIVATE] = {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": f"redis://127.0.0.1:{port}/0",
            }
            client = redis.Redis(port=port)
            for engine in (OURS_REDIS, DJANGO_REDIS):
                registry.use(engine)
                store(engine, 1)  # connections, scripts and the like exist before counting
                if engine is OURS_REDIS:
                    sample = ours_sample(client)
                client.flushall()
                result[engine.name] = counted(
                    client, functools.partial(store, engine, count), count
                )
                registry.forget([engine])
            result |= layouts(client, sample, count)
            # The same provider and layout, on a server whose hashes stay in their compact
            # listpack encoding with a 1 KB field (Redis's own setting; default 64 bytes).
            client.config_set("hash-max-listpack-value", LISTPACK_VALUE)
            client.flushall()
            registry.use(OURS_REDIS)
            fill = functools.partial(store, OURS_REDIS, count)
            result["bytes-redis-listpack"] = counted(client, fill, count)
            registry.forget([OURS_REDIS])
            client.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def ours_sample(client: Any) -> tuple[bytes, dict[bytes, bytes], int]:
    """One session as the provider stored it: its key, its hash's fields, its TTL."""
    key = next(iter(client.scan_iter(match="*:s:*")))
    return key, client.hgetall(key), int(client.ttl(key))


def counted(client: Any, fill: Callable[[], None], count: int) -> float:
    """``used_memory`` per session after ``fill()`` stores ``count`` sessions."""
    before = int(client.info("memory")["used_memory"])
    fill()
    return (int(client.info("memory")["used_memory"]) - before) / count


def layouts(
    client: Any, sample: tuple[bytes, dict[bytes, bytes], int], count: int
) -> dict[str, float]:
    """The same session in the Redis layouts the provider could have instead of one hash.

    ``layout-string``: the payload alone as a string with a TTL, nothing else (the least any
    layout can take, with no lock, no expiry index); ``layout-outside``: the payload as a string
    beside a hash of the other fields (small enough for Redis's compact listpack encoding)
    and the expiry index's entry.
    """
    key, fields, ttl = sample
    payload_bytes = fields[b"d"]
    others = {name: value for name, value in fields.items() if name != b"d"}
    prefix = key[: key.index(b"{")]
    keys = [prefix + b"{%032d}" % i for i in range(count)]

    def string() -> None:
        with client.pipeline(transaction=False) as pipe:
            for name in keys:
                pipe.set(name, payload_bytes, ex=ttl)
            pipe.execute()

    def outside() -> None:
        with client.pipeline(transaction=False) as pipe:
            for i, name in enumerate(keys):
                pipe.set(name + b":d", payload_bytes, ex=ttl)
                pipe.hset(name, mapping=others)
                pipe.expire(name, ttl)
                pipe.zadd(prefix + b"layout-expiry", {name: i})
            pipe.execute()

    result = {}
    for layout, fill in (("layout-string", string), ("layout-outside", outside)):
        client.flushall()
        result[layout] = counted(client, fill, count)
    return result


def inproc_bytes(count: int) -> dict[str, float]:
    result = {}
    for engine in (OURS_INPROC, DJANGO_LOCMEM):
        store(engine, 1)
        result[engine.name] = traced(functools.partial(store, engine, count)) / count
    result["objects"] = objects_bytes(count)
    return result


def objects_bytes(count: int) -> float:
    """The session's own objects, held alive with no store (what InProc keeps by design)."""
    held: list[dict[str, Any]] = []

    def build() -> None:
        held.extend(dict(payload()) for _ in range(count))  # a copy, as the session's cache is

    return (traced(build) - sys.getsizeof(held)) / count


def traced(work: Callable[[], None]) -> int:
    """The bytes still allocated after ``work()``, garbage collected (``tracemalloc``)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    work()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.session_bytes", description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    registry.setup_django()
    results: dict[str, Any] = {"sessions": args.sessions}
    if shutil.which("redis-server") is None:
        print("skipped Redis: redis-server is not installed")
    else:
        results["redis"] = redis_bytes(args.sessions)
        ours, django = results["redis"]["bytes-redis"], results["redis"]["bytes-django-cache-redis"]
        print(f"Redis used_memory per 1 KB session: ours {ours:,.0f}, django-redis {django:,.0f}")
        string, outside = results["redis"]["layout-string"], results["redis"]["layout-outside"]
        print(
            f"the same session in other Redis layouts: the payload alone as a string with a TTL "
            f"{string:,.0f}; the payload outside a hash of the other fields, with its expiry "
            f"entry, {outside:,.0f}"
        )
        listpack = results["redis"]["bytes-redis-listpack"]
        print(
            f"ours on a server with hash-max-listpack-value {LISTPACK_VALUE} (the hash stays a "
            f"listpack): {listpack:,.0f}"
        )
    results["inproc"] = inproc_bytes(args.sessions)
    ours, django = (
        results["inproc"]["bytes-inproc"],
        results["inproc"]["bytes-django-cache-locmem"],
    )
    objects = results["inproc"]["objects"]
    print(
        f"bytes per 1 KB session in the process: InProc {ours:,.0f}, LocMemCache {django:,.0f} "
        f"({ours / django:.2f}x); the session's live objects alone {objects:,.0f}, so InProc's "
        f"own overhead is {ours - objects:,.0f} per session"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
