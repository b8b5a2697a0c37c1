"""Checks of the Redis provider's options in Custom mode: E040, E041, W060, and Redis Cluster's
E054 (a configuration Cluster cannot have), E055 (a cluster node behind a plain alias) and E056
(``CLUSTER`` on an alias whose Redis is not a cluster)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from django_statemodes.conf import conf

REDIS_PROVIDER = "django_statemodes.providers.redis.RedisProvider"


def is_redis_provider(provider: type) -> bool:
    """Return True for RedisProvider and its subclasses."""
    # By name: importing providers/redis.py here would need redis installed in every mode.
    return any(f"{cls.__module__}.{cls.__qualname__}" == REDIS_PROVIDER for cls in provider.__mro__)


def check_redis_provider(options: dict[str, Any]) -> list[CheckMessage]:
    """Check that the provider's cache alias is a django-redis cache."""
    alias = options.get("cache_alias") or conf.STATEMODES_REDIS_ALIAS
    caches_setting: dict[str, Any] = settings.CACHES
    if alias not in caches_setting:
        return [
            Error(
                f"The Redis provider's cache alias {alias!r} is not in CACHES.",
                hint="Add a django-redis cache under that alias, or set "
                "STATEMODES_REDIS_ALIAS (or the provider's cache_alias option) to one.",
                id="django_statemodes.E040",
            )
        ]
    backend = caches_setting[alias].get("BACKEND", "")
    if not isinstance(backend, str) or not backend.startswith("django_redis."):
        return [
            Error(
                f"The Redis provider's cache {alias!r} uses {backend!r}, not django-redis.",
                hint="Use BACKEND 'django_redis.cache.RedisCache' for that alias.",
                id="django_statemodes.E041",
            )
        ]
    return [
        *check_cluster(alias, caches_setting[alias]),
        *check_shared_alias(alias, caches_setting),
    ]


def check_cluster(alias: str, config: dict[str, Any]) -> list[CheckMessage]:
    """Check that ``OPTIONS["CLUSTER"]`` matches what the alias's Redis is.

    A plain client on a cluster node works for the keys of that node's slots only (the others
    answer MOVED: 503s); a cluster client on a plain Redis cannot start. The Redis is asked
    (``INFO cluster``, 1 s at most); an unreachable one is left to the 503s and their log.
    """
    options = config.get("OPTIONS") or {}
    cluster = bool(options.get("CLUSTER"))
    urls = sorted(redis_databases(config), key=str)
    if cluster:
        client_class = str(options.get("CLIENT_CLASS", ""))
        problems = [
            f"{host}:{port} uses database {db}" for scheme, host, port, db in urls if db != "0"
        ]
        problems += [f"{host} is a Unix socket" for scheme, host, _, _ in urls if scheme == "unix"]
        if client_class.endswith(("SentinelClient", "ShardClient")):
            problems.append(f"CLIENT_CLASS is {client_class}")
        if problems:
            return [
                Error(
                    f"The Redis provider's cache {alias!r} has OPTIONS['CLUSTER'] but "
                    f"{'; '.join(problems)}.",
                    hint="Redis Cluster has database 0 only and is reached over TCP; list "
                    "some of its nodes in LOCATION (redis://host:port/0) and keep django-redis's "
                    "DefaultClient (docs/redis.md, Redis Cluster).",
                    id="django_statemodes.E054",
                )
            ]
    elif "Sentinel" in str(options.get("CLIENT_CLASS", "")):
        return []  # LOCATION names a Sentinel service, not a server to ask
    enabled = cluster_enabled(config)
    if enabled is True and not cluster:
        return [
            Error(
                f"The Redis behind the Redis provider's cache {alias!r} is a Redis Cluster node, "
                "and the alias is not configured for a cluster.",
                hint='Add "CLUSTER": True to the alias\'s OPTIONS: without it every session '
                "whose slot is on another node gets a 503 (MOVED).",
                id="django_statemodes.E055",
            )
        ]
    if enabled is False and cluster:
        return [
            Error(
                f"The Redis provider's cache {alias!r} has OPTIONS['CLUSTER'], and its Redis is "
                "not a cluster (cluster_enabled:0).",
                hint='Remove "CLUSTER" from the alias\'s OPTIONS, or point LOCATION at the '
                "cluster's nodes.",
                id="django_statemodes.E056",
            )
        ]
    return []


def cluster_enabled(config: dict[str, Any]) -> bool | None:
    """``cluster_enabled`` of INFO on the alias's first server; None if it cannot be asked."""
    location = config.get("LOCATION", "")
    urls = location.split(",") if isinstance(location, str) else list(location or [])
    if not urls:
        return None
    options = config.get("OPTIONS") or {}
    try:
        import redis

        client = redis.Redis.from_url(
            str(urls[0]).strip(),
            username=options.get("USERNAME"),
            password=options.get("PASSWORD"),
            socket_connect_timeout=0.5,
            socket_timeout=1,
        )
        try:
            info = client.info("cluster")
        finally:
            client.close()
    except Exception:  # not installed, down, refused, wrong password: nothing to say here
        return None
    return bool(info.get("cluster_enabled"))


def check_shared_alias(alias: str, caches: dict[str, Any]) -> list[CheckMessage]:
    """Warn when the sessions' Redis database is also a cache the site clears.

    ``cache.clear()`` is FLUSHDB in django-redis and in Django's own Redis cache: it empties
    the whole Redis database, key prefixes or not, so every session on it is deleted. Which
    aliases a site clears cannot be known; these surely are caches: ``default``, Django's
    ``SESSION_CACHE_ALIAS`` and ``CACHE_MIDDLEWARE_ALIAS``, and any other Redis alias of CACHES
    on the same server and database.
    """
    cache_aliases = {
        "default",
        getattr(settings, "SESSION_CACHE_ALIAS", "default"),
        getattr(settings, "CACHE_MIDDLEWARE_ALIAS", "default"),
    }
    ours = redis_databases(caches[alias])
    sharing = sorted(
        other
        for other, config in caches.items()
        if other != alias
        and "redis" in str(config.get("BACKEND", "")).lower()
        and ours & redis_databases(config)
    )
    if alias in cache_aliases:
        problem = (
            f"the Redis provider uses the cache alias {alias!r}, which the site uses as a cache"
        )
    elif sharing:
        problem = (
            f"the Redis provider's cache {alias!r} is on the same Redis database as the "
            f"cache{'s' if len(sharing) > 1 else ''} {', '.join(map(repr, sharing))}"
        )
    else:
        return []
    return [
        Warning(
            f"Sessions can be wiped by accident: {problem}; cache.clear() on it runs FLUSHDB "
            "and deletes every session.",
            hint="Give sessions a dedicated alias on a Redis database of their own, e.g. "
            "CACHES['sessions'] with LOCATION 'redis://127.0.0.1:6379/1' and "
            "STATEMODES_REDIS_ALIAS = 'sessions' (docs/redis.md).",
            id="django_statemodes.W060",
        )
    ]


def redis_databases(config: dict[str, Any]) -> set[tuple[str, str, int | None, str]]:
    """Return the (scheme, host or socket path, port, db) of each server of a cache's LOCATION."""
    location = config.get("LOCATION", "")
    # Both django-redis and Django take a list or a comma-separated string of servers.
    urls = location.split(",") if isinstance(location, str) else list(location or [])
    databases: set[tuple[str, str, int | None, str]] = set()
    for url in map(str, urls):
        parts = urlsplit(url.strip())
        unix = parts.scheme == "unix"
        try:
            port = None if unix else (parts.port or 6379)
        except ValueError:  # not a port: left to the cache to refuse
            port = -1
        if parts.scheme not in {"redis", "rediss", "unix"} or port == -1:
            databases.add(("", url.strip(), None, ""))  # unknown form: compared as written
            continue
        db = parse_qs(parts.query).get("db", [""])[0] or ("" if unix else parts.path.strip("/"))
        host = parts.path if unix else (parts.hostname or "localhost")
        databases.add(("unix" if unix else "tcp", host, port, db or "0"))
    return databases
