"""Private servers started on free loopback ports, shared by the tests and the benchmarks.

Not part of the package: a PgBouncer in front of the local PostgreSQL (``pgbouncer``) and a
6-node Redis Cluster (``redis_cluster``). Each is started by a context manager and stopped by
its process id.
"""

from __future__ import annotations
