"""A private 6-node Redis Cluster (3 primaries, 3 replicas) on free loopback ports, for tests and
benchmarks: ``redis-server --cluster-enabled yes`` six times, then ``redis-cli --cluster
create``. Nodes can be killed (``kill -9``) to watch a failover; everything is stopped by pid
and the working directories removed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

# Fast failure detection for the tests: a primary that stops answering for this long is
# marked failed and its replica promoted (Redis's default is 15 s).
NODE_TIMEOUT_MS = 1000


def _free_port() -> int:
    import socket

    # The cluster bus listens on port + 10000: both must be free.
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """Six redis-server processes joined into one cluster."""

    def __init__(self, nodes: int = 6) -> None:
        self.ports = [_free_port() for _ in range(nodes)]
        self.dir = tempfile.mkdtemp(prefix="statemodes-cluster-")
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}/0" for port in self.ports]

    def cache(self, **options: Any) -> dict[str, Any]:
        """A CACHES entry for the provider on this cluster."""
        return {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": self.urls[:3],
            "OPTIONS": {"CLUSTER": True, "SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 5}
            | options,
        }

    def start_node(self, port: int) -> None:
        node_dir = os.path.join(self.dir, str(port))
        os.makedirs(node_dir, exist_ok=True)
        command = [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
            "--dir", node_dir, "--daemonize", "no", "--logfile", "redis.log",
        ]  # fmt: skip
        self.processes[port] = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    client.close()
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        create = [
            "redis-cli", "--cluster", "create",
            *[f"127.0.0.1:{port}" for port in self.ports],
            "--cluster-replicas", "1", "--cluster-yes",
        ]  # fmt: skip
        subprocess.run(create, check=True, stdout=subprocess.DEVNULL, timeout=60)
        self.wait_ok(self.ports)
        self.wait_synced()

    def wait_synced(self, timeout: float = 60) -> None:
        """Until every replica has its primary's data: a replica that never synced is never
        promoted (it would serve an empty slot range)."""
        deadline = time.monotonic() + timeout
        pending = list(self.live_ports())
        while pending and time.monotonic() < deadline:
            for port in list(pending):
                client = redis.Redis(port=port, socket_timeout=1)
                try:
                    info = client.info("replication")
                finally:
                    client.close()
                if info.get("role") == "master" or info.get("master_link_status") == "up":
                    pending.remove(port)
            time.sleep(0.1)
        if pending:
            raise RuntimeError(f"the replicas on {pending} did not sync with their primaries")

    def info(self, port: int) -> dict[str, str]:
        client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            text = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        finally:
            client.close()
        if isinstance(text, bytes):
            text = text.decode()
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def state_ok(self, port: int) -> bool:
        try:
            return self.info(port).get("cluster_state") == "ok"
        except redis.RedisError:
            return False

    def wait_ok(self, ports: list[int], timeout: float = 30) -> None:
        """Until every node of ``ports`` says cluster_state:ok and knows every slot."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.state_ok(port) for port in ports) and all(
                self.info(port).get("cluster_slots_ok") == "16384" for port in ports
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster on {ports} did not reach cluster_state:ok")

    def nodes(self, port: int) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` of one node: port, role flags and the slots each node serves."""
        client = redis.Redis(port=port, socket_timeout=1)
        try:
            text = client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
        finally:
            client.close()
        if isinstance(text, bytes):
            text = text.decode()
        rows = []
        for line in text.splitlines():
            fields = line.split()
            rows.append(
                {
                    "id": fields[0],
                    "port": int(fields[1].split("@", 1)[0].rsplit(":", 1)[1]),
                    "flags": set(fields[2].split(",")),
                    "primary_of": fields[3],
                    "slots": fields[8:],
                }
            )
        return rows

    def primary_of_slot(self, slot: int) -> int:
        """The port of the primary serving ``slot``, as a live node sees it."""
        for port in self.live_ports():
            for row in self.nodes(port):
                if "master" not in row["flags"] or "fail" in row["flags"]:
                    continue
                for slots in row["slots"]:
                    low, _, high = slots.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return int(row["port"])
            break
        raise RuntimeError(f"no primary serves slot {slot}")

    def replica_of(self, port: int) -> int:
        """The port of the replica of the primary on ``port``."""
        rows = self.nodes(port)
        primary_id = next(row["id"] for row in rows if row["port"] == port)
        return next(int(row["port"]) for row in rows if row["primary_of"] == primary_id)

    def wait_promoted(self, replica: int, timeout: float = 60) -> float:
        """Until another live node lists ``replica`` as a primary; returns that moment."""
        watcher = next(port for port in self.live_ports() if port != replica)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.nodes(watcher)
            if any(row["port"] == replica and "master" in row["flags"] for row in rows):
                return time.monotonic()
            time.sleep(0.02)
        raise RuntimeError(f"the replica on {replica} was never promoted")

    def live_ports(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def kill(self, port: int) -> None:
        """``kill -9`` one node."""
        process = self.processes[port]
        if process.poll() is not None:
            # Say why, with the node's own log: a test that meant to kill it would otherwise
            # fail on a bare ProcessLookupError, and the log goes with the cluster's folder.
            raise RuntimeError(
                f"the cluster node on {port} had exited by itself (code {process.returncode}) "
                f"before it was to be killed; the end of its log:\n{self.log_tail(port)}"
            )
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def log_tail(self, port: int, lines: int = 30) -> str:
        """The last lines of one node's ``redis.log``."""
        try:
            with open(os.path.join(self.dir, str(port), "redis.log"), errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def available() -> str | None:
    """Why a cluster cannot be started here, or None."""
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed"
    return None


@contextmanager
def running_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
