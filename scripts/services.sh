#!/usr/bin/env bash
# Start the services the test suite talks to, if they are down (loopback only):
# PostgreSQL 127.0.0.1:5432 (user root, database test), MariaDB 127.0.0.1:3306 (user root, no
# password, database test) and Redis 127.0.0.1:6379.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! up 5432; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
fi
if ! up 3306; then
    echo "services: starting MariaDB"
    service mariadb start >/dev/null 2>&1 || /etc/init.d/mariadb start || true
fi
if ! up 6379; then
    echo "services: starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
fi
for _ in $(seq 1 30); do
    if up 5432 && up 3306 && up 6379; then
        exit 0
    fi
    sleep 1
done
up 5432 || echo "services: PostgreSQL is not reachable at 127.0.0.1:5432" >&2
up 3306 || echo "services: MariaDB is not reachable at 127.0.0.1:3306" >&2
up 6379 || echo "services: Redis is not reachable at 127.0.0.1:6379" >&2
exit 1
