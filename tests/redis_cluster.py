"""The private Redis Cluster of the tests: it lives in ``localservers``, shared with the benchmarks."""

from __future__ import annotations

from localservers.redis_cluster import NODE_TIMEOUT_MS, RedisCluster, available, running_cluster

__all__ = ["NODE_TIMEOUT_MS", "RedisCluster", "available", "running_cluster"]
