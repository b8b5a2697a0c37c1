"""Redis Cluster for the Redis provider: key buckets, the cluster clients, the subscriber's node.

A Lua script may only touch keys of one hash slot. A session's hash and the expiry set that
indexes it must be written by the same script (atomically), so in Cluster mode each session
belongs to one of ``BUCKETS`` buckets (CRC32 of its key): its hash is
``<ns>s:{b042}<session key>`` and its bucket's expiry set ``<ns>expiry:{b042}``; the hash tag
``{b042}`` puts both in one slot. ``purge_sessions`` then visits ``BUCKETS`` sorted sets, not
16,384 slots, and resharding moves whole buckets with their sessions.

Wake-ups stay a plain ``PUBLISH``: in a cluster it is forwarded to every node over the cluster
bus, so the process's one subscriber may listen on any node (a replica included) and moves to
another node when its node goes away.
"""

from __future__ import annotations

import zlib
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured
from redis import Redis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry

__all__ = [
    "BUCKETS",
    "RETRIES",
    "async_cluster_client",
    "bucket",
    "cluster_client",
    "cluster_kwargs",
    "node_client",
    "tags",
]

# Fixed forever for a given key prefix: changing it would orphan every live session's hash.
# 256 buckets spread over three to a few dozen primaries evenly enough, and a purge run is
# 256 short script calls.
BUCKETS = 256
# redis-py's cluster client retries a command after a connection error, refreshing its slot
# map each time. Few retries with a short backoff: a failover answers 503 + Retry-After within
# about a second instead of holding the request (redis-py's default is 10 retries).
RETRIES = 3


def tags() -> list[str]:
    """Every bucket's hash tag."""
    return [f"b{number:03d}" for number in range(BUCKETS)]


def bucket(session_key: str) -> str:
    """The hash tag of a session's bucket: ``b000`` to ``b255``."""
    return f"b{zlib.crc32(session_key.encode()) % BUCKETS:03d}"


def cluster_kwargs(params: dict[str, Any]) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Split django-redis's connection params into startup nodes and cluster client kwargs.

    ``params`` is what ``make_connection_params`` builds for the alias's first LOCATION (its
    URL, USERNAME, PASSWORD, socket timeouts, CONNECTION_POOL_KWARGS); ``params["urls"]`` all
    LOCATION URLs, each a startup node. Cluster has database 0 only.
    """
    kwargs = {k: v for k, v in params.items() if k not in ("url", "urls", "parser_class")}
    nodes = []
    for url in params["urls"]:
        parsed: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        if parsed.pop("db", 0) not in (0, "0", None):
            raise ImproperlyConfigured(
                f"{url!r}: Redis Cluster has database 0 only; drop the database from the "
                "LOCATION of the Redis provider's cache alias (check django_statemodes.E054)."
            )
        if parsed.pop("connection_class", None) is SSLConnection:
            kwargs["ssl"] = True
        if "path" in parsed:
            raise ImproperlyConfigured(f"{url!r}: Redis Cluster nodes are reached over TCP.")
        parts = urlsplit(url)
        nodes.append((parts.hostname or "localhost", parts.port or 6379))
        for key in ("username", "password"):
            if parsed.get(key) and key not in kwargs:
                kwargs[key] = parsed[key]
        for key, value in parsed.items():  # the URL's query options (ssl_cert_reqs, ...)
            if key not in ("host", "port", "username", "password"):
                kwargs.setdefault(key, value)
    return nodes, kwargs


def cluster_client(params: dict[str, Any], pool_class: Any) -> RedisCluster:
    """The blocking path's cluster client: ``pool_class`` (bounded) per node."""
    nodes, kwargs = cluster_kwargs(params)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],  # type: ignore[no-untyped-call]
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES),
        connection_pool_class=pool_class,
        **kwargs,
    )


def async_cluster_client(params: dict[str, Any], max_connections: int) -> AsyncRedisCluster:
    """An event loop's cluster client: at most ``max_connections`` per node."""
    from redis.asyncio.retry import Retry as AsyncRetry

    nodes, kwargs = cluster_kwargs(params)
    return AsyncRedisCluster(
        startup_nodes=[AsyncClusterNode(host, port) for host, port in nodes],
        retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES),
        max_connections=max_connections,
        **kwargs,
    )


def node_client(cluster: Any, params: dict[str, Any], **extra: Any) -> Redis:
    """A plain client to one reachable node of the cluster (for the subscriber).

    Nodes are tried in the client's current order, primaries first; a dead one is skipped.
    """
    _, kwargs = cluster_kwargs(params)
    kwargs.pop("connection_pool_class", None)
    nodes = [*cluster.get_primaries(), *cluster.get_replicas()] or [cluster.get_random_node()]
    error: Exception | None = None
    for node in nodes:
        client = Redis(host=node.host, port=node.port, **kwargs, **extra)
        try:
            client.ping()
            return client
        except Exception as exc:  # down or unreachable: the next node
            client.close()
            error = exc
    assert error is not None
    raise error
