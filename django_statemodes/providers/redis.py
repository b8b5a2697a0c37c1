"""The Redis provider: session state in Redis through django-redis, with ASP.NET locking.

Each session is one hash, ``<prefix>:<application>:s:{<session key>}``, with the fields
``d`` (payload), ``ex`` (expiry, ms of the Redis server's clock), ``to`` (timeout, s), ``lk``
(locked), ``lid`` (ASP.NET's LockCookie), ``lt`` (lock date, ms) and ``in`` (ASP.NET's
InitializeItem flag). Every operation is one Lua script run with EVALSHA, so lock+load and
save+release are one round trip each and atomic on the server; lock ages use the server's clock,
so web servers with skewed clocks agree.

Expiry slides on every get, exclusive get, release and reset. An item past ``ex`` is never
served. A sorted set per application, ``<prefix>:<application>:expiry`` (score = ``ex``), lets
``purge_expired`` find expired sessions with their data for ``session_end``; the hash itself
also carries a Redis TTL of ``timeout + end_grace`` seconds, so Redis frees the memory even if
nobody purges (a session purged after that is still reported, without its data).

Waiters are woken without polling and hold no connection while they sleep: one subscriber
connection per server and process, read by a daemon thread, listens on
``<prefix>:<application>:released`` and feeds ``wakeups.Wakeups``. A waiter registers there,
then looks at the lock once more (``_WATCH``, which also sets the item's ``wt`` flag); a release,
save-and-release or removal of a flagged item PUBLISHes its session key in the same script. A
release before the waiter's last look is seen by that look, one after it reaches the waiter
already registered: no wake-up is lost. A release nobody waits for publishes nothing.

Connections: the blocking path and each event loop's ``redis.asyncio`` path use a bounded
``BlockingConnectionPool`` of their own (STATEMODES_MAX_CONNECTIONS, STATEMODES_CONNECTION_WAIT),
built from the django-redis alias's URL(s) and OPTIONS; a full pool is ``SessionPoolExhausted``.
Sentinel keeps django-redis's pool (only it finds the primary), and its async twins run in a small
executor of ours. The ``{key}`` hash tags let django-redis's ``ShardClient`` ring pick a
session's server; each shard keeps its own expiry set and subscriber.

Redis Cluster (``OPTIONS["CLUSTER"]`` on the alias): redis-py's cluster clients, and keys
bucketed so that a session's hash and its expiry set share a hash slot (see redis_cluster.py).

The index of sessions by user (STATEMODES_USER_INDEX): a bound session's hash also holds ``u``
(user id), ``c`` (bound at, ms), ``ls`` (last seen, ms), ``ip`` and ``ua``; a set per user,
``<prefix>:<application>:u:{<user id>}`` (its own hash slot in a cluster; on each session's
own shard with ShardClient), has the session keys as members. A save keeps the fields (it
writes others), a new item replaces the hash (so a reused key is never someone else's), the
removal script takes the member out of the set (in a cluster, where a script reaches one slot,
the client does, after it), and a listing reads the set, then every member's fields in one
pipeline, and removes the members whose session is gone, expired or now someone else's. The
set's TTL follows its longest-lived session, so a user who never comes back leaves nothing.

Failover (Sentinel or Cluster): an exclusive get or a save carries a random token stored with
the item, so a call redis-py sends again after its reply was lost is recognised (a lock granted
to itself, a write already applied); a call that takes or ends a lock and fails hands the release
to ``_Releaser``, which retries it until the new primary answers. No lock left on a promoted
replica waits for STATEMODES_LOCK_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django_redis.pool import SentinelConnectionFactory
from redis import BlockingConnectionPool, Redis
from redis.asyncio import BlockingConnectionPool as AsyncBlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import (
    AskError,
    ClusterError,
    MaxConnectionsError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from django_statemodes.conf import conf
from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.memory import MAX_IP_LENGTH, MAX_USER_AGENT_LENGTH, check_user_id
from django_statemodes.providers import redis_cluster
from django_statemodes.providers.base import (
    ExpiredItem,
    SessionInfo,
    SessionStateProvider,
    StateItem,
)
from django_statemodes.providers.pool import PerLoop, exhausted
from django_statemodes.providers.wakeups import Wakeups

__all__ = ["RedisProvider"]

# Longest single sleep of a waiter: it looks at the lock at least this often, whatever happens
# (a lost subscriber, a lock that expired with its item).
MAX_BLOCK = 5.0
# A waiter's sleep while the subscriber is not subscribed (starting, or Redis down).
FALLBACK_SLEEP = 0.1
# How often the subscriber thread checks whether it should stop; its health-check interval.
SUBSCRIBER_POLL = 1.0
SUBSCRIBER_HEALTH_CHECK = 30

# Errors that mean "the store cannot be reached now" (503), not a bug. ReadOnlyError is a
# replica answering during a Sentinel failover, before the client has found the new primary.
# In a cluster: ClusterError (CLUSTERDOWN, and redis-py's "TTL exhausted" after MOVED/ASK
# redirections that kept failing), RedisClusterException (no reachable node, a slot with no
# primary) and the MOVED/ASK/TRYAGAIN replies redis-py gives up on during a failover.
UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OSError,
    ClusterError,
    RedisClusterException,
    AskError,
    TryAgainError,
)
# MOVED and ASK (AskError, MovedError): redis-py follows them in Cluster mode and gives up
# only during a failover; to a plain client they mean the alias points at a cluster node.
# How often the releaser tries again to end a lock whose holder's last call failed.
RELEASE_RETRY = 0.25
# The most lock releases the releaser keeps waiting to be retried (the oldest are dropped).
RELEASE_BACKLOG = 1000

# Shared Lua: the server's clock in ms, the slide of an item's expiry by its timeout and the
# wake-up of waiters. KEYS[1] is always the item hash; @GRACE_MS@ is the provider's end_grace.
# A slide only moves the hash's ``ex`` and its Redis TTL: the expiry set's score may lag behind
# ``ex`` (it is written on insert and when the timeout changes) and purge_expired re-scores a
# lagging entry when it meets it. Reads stay cheap that way. Arguments are few and short:
# encoding them is a large part of a round trip's client-side cost.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function slide(to)
  redis.call('PEXPIRE', KEYS[1], to * 1000 + @GRACE_MS@)
  return now + to * 1000
end
-- A lock ended: if a waiter flagged the item (the 'wt' field, set by _WATCH), tell the
-- subscribers, on '<namespace>released', the session key. Without waiters: no PUBLISH.
-- The item is '<ns>s:{<key>}', or in Cluster mode '<ns>s:{<bucket>}<key>'.
local function released(waiters)
  if waiters ~= '1' then return end
  redis.call('HDEL', KEYS[1], 'wt')
  local ns, tag, key = string.match(KEYS[1], '^(.*)s:{(.-)}(.*)$')
  if key == '' then key = tag end
  redis.call('PUBLISH', ns .. 'released', key)
end
"""

# ARGV[1]: '1' for an exclusive get, ARGV[2] its token (see _token). Returns nil, or one
# string: a header line "locked lock_id lock_age_ms timeout initialize has_data" and then the
# payload. One bulk string instead of an array: far less for the client to parse. An exclusive
# get of an item held by another request returns the header alone (the holder's lock id and
# lock age). The lock's holder is also recorded by token ('tk'): the same get, retried by
# redis-py after its reply was lost in a failover, is the holder and not a waiter on itself.
# The lock id grows by 1 + a random amount taken from the token, so that a lock granted by a
# primary that died before replicating it and one granted by its promoted replica differ.
_GET = """
local f = redis.call('HMGET', KEYS[1], 'ex', 'to', 'lk', 'lid', 'lt', 'in', 'd', 'tk')
if not f[1] or tonumber(f[1]) <= now then return nil end
local to = tonumber(f[2])
local ex = slide(to)
local lid = tonumber(f[4])
local init = 0
if f[6] == '1' then init = 1 end
local age = 0
local mine = ARGV[1] == '1' and f[3] == '1' and f[8] == ARGV[2]
if f[3] == '1' and not mine then
  age = now - tonumber(f[5])
  if ARGV[1] == '1' then
    redis.call('HSET', KEYS[1], 'ex', ex)
    return string.format('1 %d %d %d 0 0\\n', lid, age, to)
  end
  redis.call('HSET', KEYS[1], 'ex', ex, 'in', '0')
elseif mine then
  redis.call('HSET', KEYS[1], 'ex', ex, 'in', '0')
elseif ARGV[1] == '1' then
  lid = lid + 1 + tonumber(string.sub(ARGV[2], 1, 4), 16)
  redis.call('HSET', KEYS[1], 'ex', ex, 'in', '0', 'lk', '1', 'lid', lid, 'lt', now,
             'tk', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'ex', ex, 'in', '0')
end
local locked = 0
if f[3] == '1' and ARGV[1] ~= '1' then locked = 1 end
if f[7] then
  return string.format('%d %d %d %d %d 1\\n', locked, lid, age, to, init) .. f[7]
end
return string.format('%d %d %d %d %d 0\\n', locked, lid, age, to, init)
"""

# KEYS[2] expiry set; ARGV[1] session key, ARGV[2] payload, ARGV[3] lock
# id or '', ARGV[4] timeout, ARGV[5] three flags: new item, release, uninitialized (no
# payload), ARGV[6] the write's token. Returns 1 if written, 0 if refused. A write whose token
# is already there is this very write, retried after its reply was lost: 1, and nothing done.
_SET = """
local to = tonumber(ARGV[4])
local f = redis.call('HMGET', KEYS[1], 'ex', 'lk', 'lid', 'to', 'wt', 'tk')
local live = f[1] and tonumber(f[1]) > now
if live and f[6] == ARGV[6] then return 1 end
if string.sub(ARGV[5], 1, 1) == '1' then
  if live then return 0 end
  redis.call('DEL', KEYS[1])
  local ex = now + to * 1000
  if string.sub(ARGV[5], 3, 3) == '1' then
    redis.call('HSET', KEYS[1], 'ex', ex, 'to', to, 'lk', '0', 'lid', 1, 'lt', 0, 'in', '1',
               'tk', ARGV[6])
  else
    redis.call('HSET', KEYS[1], 'd', ARGV[2], 'ex', ex, 'to', to, 'lk', '0', 'lid', 1,
               'lt', 0, 'in', '0', 'tk', ARGV[6])
  end
  slide(to)  -- after HSET: PEXPIRE needs the key to exist
  redis.call('ZADD', KEYS[2], ex, ARGV[1])
  return 1
end
if not live then return 0 end
if ARGV[3] ~= '' and (f[2] ~= '1' or tonumber(f[3]) ~= tonumber(ARGV[3])) then return 0 end
local ex = slide(to)
if tonumber(f[4]) ~= to then
  redis.call('ZADD', KEYS[2], ex, ARGV[1])  -- a shorter timeout may expire before the score
end
if string.sub(ARGV[5], 2, 2) == '1' and ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'd', ARGV[2], 'ex', ex, 'to', to, 'in', '0', 'lk', '0',
             'tk', ARGV[6])
  released(f[5])
else
  redis.call('HSET', KEYS[1], 'd', ARGV[2], 'ex', ex, 'to', to, 'in', '0', 'tk', ARGV[6])
end
return 1
"""

# ARGV[1] lock id, or '' and ARGV[2] the token of the exclusive get that took the lock (an
# exclusive get whose reply was lost: see _Releaser), or both '' to slide the expiry only.
# Unlocks (if the lock id or token matches) and slides.
_RELEASE = """
local f = redis.call('HMGET', KEYS[1], 'ex', 'to', 'lk', 'lid', 'wt', 'tk')
if not f[1] or tonumber(f[1]) <= now then return 0 end
if ARGV[1] == '' and ARGV[2] == '' then
  redis.call('HSET', KEYS[1], 'ex', slide(tonumber(f[2])))
  return 1
end
if f[3] ~= '1' then return 0 end
if ARGV[1] ~= '' and tonumber(f[4]) ~= tonumber(ARGV[1]) then return 0 end
if ARGV[1] == '' and f[6] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'ex', slide(tonumber(f[2])), 'lk', '0')
released(f[5])
return 1
"""

# KEYS[2] expiry set; ARGV[1] session key, ARGV[2] lock id or '', ARGV[3] '1' to take the key
# out of its user's set here (one server), else '0' (a cluster: the set is in another slot).
# Deletes the item unless another request holds its lock. Returns 0, 1, or (ARGV[3] '0', a
# bound session) its user id: the caller removes the member from the user's set.
_REMOVE = """
local f = redis.call('HMGET', KEYS[1], 'lk', 'lid', 'wt', 'u')
if not f[1] then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if ARGV[2] ~= '' and f[1] == '1' and tonumber(f[2]) ~= tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
released(f[3])
if f[4] then
  if ARGV[3] ~= '1' then return f[4] end
  local ns = string.match(KEYS[1], '^(.*)s:{')
  redis.call('SREM', ns .. 'u:{' .. f[4] .. '}', ARGV[1])
end
return 1
"""

# The index of sessions by user. KEYS[1] the item. _BIND: ARGV[1] user id, ARGV[2] ip,
# ARGV[3] user agent, ARGV[4] two flags (ip given, user agent given). Returns nil if the item
# is missing or expired, else {previous user id or '', timeout}. Neither slides the expiry:
# binding and touching are not session writes.
_BIND = """
local f = redis.call('HMGET', KEYS[1], 'ex', 'u', 'to')
if not f[1] or tonumber(f[1]) <= now then return nil end
redis.call('HSET', KEYS[1], 'u', ARGV[1], 'c', now, 'ls', now)
if string.sub(ARGV[4], 1, 1) == '1' then
  redis.call('HSET', KEYS[1], 'ip', ARGV[2])
else
  redis.call('HDEL', KEYS[1], 'ip')
end
if string.sub(ARGV[4], 2, 2) == '1' then
  redis.call('HSET', KEYS[1], 'ua', ARGV[3])
else
  redis.call('HDEL', KEYS[1], 'ua')
end
return {f[2] or '', f[3]}
"""

# ARGV[1] ip, ARGV[2] user agent, ARGV[3] two flags (replace the ip, the user agent).
_TOUCH = """
local f = redis.call('HMGET', KEYS[1], 'ex', 'u')
if not f[1] or tonumber(f[1]) <= now or not f[2] then return 0 end
redis.call('HSET', KEYS[1], 'ls', now)
if string.sub(ARGV[3], 1, 1) == '1' then redis.call('HSET', KEYS[1], 'ip', ARGV[1]) end
if string.sub(ARGV[3], 2, 2) == '1' then redis.call('HSET', KEYS[1], 'ua', ARGV[2]) end
return 1
"""

# Returns the user id it was bound to ('' if none).
_UNBIND = """
local u = redis.call('HGET', KEYS[1], 'u')
if not u then return '' end
redis.call('HDEL', KEYS[1], 'u', 'c', 'ls', 'ip', 'ua')
return u
"""

# KEYS[1] a user's set; ARGV[1] session key, ARGV[2] its lifetime in ms. Adds the member and
# keeps the set alive as long as its longest-lived session.
_INDEX = """
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# KEYS[1] expiry set; ARGV[1] and ARGV[2] what comes before and after a session key in its
# item's key, ARGV[3] wake-up channel, ARGV[4] batch size, ARGV[5] '1' to return payloads,
# ARGV[6] '1' for a dry run (count only), ARGV[7] '1' to take a bound item's key out of its
# user's set (one server: the set is reachable from here).
# Returns {session key, payload or nil, ...} for the expired items it removed.
_PURGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[6] == '1' then return redis.call('ZCOUNT', KEYS[1], '-inf', now) end
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, m in ipairs(members) do
  local k = ARGV[1] .. m .. ARGV[2]
  local f = redis.call('HMGET', k, 'ex', 'lk', 'd', 'u')
  if f[1] and tonumber(f[1]) > now then
    redis.call('ZADD', KEYS[1], f[1], m)
  else
    redis.call('ZREM', KEYS[1], m)
    if f[1] then
      redis.call('DEL', k)
      if f[2] == '1' then redis.call('PUBLISH', ARGV[3], m) end
      if f[4] and ARGV[7] == '1' then
        redis.call('SREM', string.sub(ARGV[1], 1, -4) .. 'u:{' .. f[4] .. '}', m)
      end
    end
    out[#out + 1] = m
    if ARGV[5] == '1' and f[3] then out[#out + 1] = f[3] else out[#out + 1] = false end
  end
end
return out
"""

# A waiter's last look before it sleeps, made after it registered for the wake-up (so a release
# after this look wakes it, and one before it is seen here). ARGV[1] the lock id it saw.
# Returns 1 if that lock is still held, and flags the item: its release will PUBLISH.
_WATCH = """
local f = redis.call('HMGET', KEYS[1], 'lk', 'lid')
if f[1] ~= '1' or tonumber(f[2]) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'wt', '1')
return 1
"""


#: What a listing reads of each session's hash (besides HSTRLEN of ``d``, its size).
_ROW_FIELDS = ("ex", "u", "c", "ls", "ip", "ua", "lk", "lt")


def _compile(end_grace_ms: int) -> dict[str, tuple[str, str]]:
    """Return ``{name: (sha1, source)}`` of the scripts for one end_grace."""
    scripts = {
        "get": _PRELUDE + _GET,
        "set": _PRELUDE + _SET,
        "release": _PRELUDE + _RELEASE,
        "remove": _PRELUDE + _REMOVE,
        "purge": _PURGE,
        "watch": _WATCH,
        "bind": _PRELUDE + _BIND,
        "touch": _PRELUDE + _TOUCH,
        "unbind": _UNBIND,
        "index": _INDEX,
    }
    compiled = {}
    for name, source in scripts.items():
        source = source.replace("@GRACE_MS@", str(end_grace_ms))
        compiled[name] = (hashlib.sha1(source.encode()).hexdigest(), source)
    return compiled


def _django_redis_client(alias: str) -> Any:
    """Return django-redis's client object (``caches[alias].client``) for ``alias``."""
    from django.conf import settings
    from django.core.cache import caches

    if alias not in settings.CACHES:
        raise ImproperlyConfigured(
            f"STATEMODES_REDIS_ALIAS is {alias!r}, which is not an alias in CACHES. "
            "Add a django-redis cache under that alias (BACKEND "
            "'django_redis.cache.RedisCache') or set STATEMODES_REDIS_ALIAS to one."
        )
    client = getattr(caches[alias], "client", None)
    if client is None or not hasattr(client, "get_client"):
        caches_setting: dict[str, Any] = settings.CACHES
        backend = caches_setting[alias].get("BACKEND")
        raise ImproperlyConfigured(
            f"The cache {alias!r} (STATEMODES_REDIS_ALIAS) uses {backend!r}; the Redis "
            "provider needs django-redis ('django_redis.cache.RedisCache')."
        )
    return client


# Bounded pools. redis-py's BlockingConnectionPool waits up to ``timeout`` for a connection,
# then raises a ConnectionError; ours raise SessionPoolExhausted instead (503 + Retry-After,
# with the settings to raise), so that a full pool is not reported as a Redis outage.


class _BlockingPool(BlockingConnectionPool):
    """The blocking path's pool: at most STATEMODES_MAX_CONNECTIONS per server and process."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if isinstance(exc.__context__, queue.Empty):  # the pool's wait ran out
                raise exhausted(_pool_name(self), self.max_connections, self.timeout or 0) from exc
            raise


class _AsyncBlockingPool(AsyncBlockingConnectionPool):
    """The async path's pool: as many per server and event loop."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if isinstance(exc.__cause__, TimeoutError):  # the pool's wait ran out
                raise exhausted(_pool_name(self), self.max_connections, self.timeout or 0) from exc
            raise


def _pool_name(pool: Any) -> str:
    kwargs = pool.connection_kwargs
    return f"Redis at {kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"


@dataclass
class _Server:
    """One Redis server of the alias (its primary, or one shard), as this provider uses it."""

    name: str  # the LOCATION URL (django-redis's shard name)
    client: Any  # the blocking path's Redis (or RedisCluster), over bounded pools
    # redis-py connection kwargs (URL included) for the async path and the subscriber; None
    # for Sentinel, whose primary only django-redis's Sentinel pool knows how to find.
    params: dict[str, Any] | None
    subscriber: _Subscriber
    cluster: bool = False  # one _Server for a whole Redis Cluster: redis-py routes by slot


class _Releaser:
    """Ends the locks whose holder's last call failed, by retrying until the store answers.

    During a failover the call that ends a lock (save-and-release, release) or the exclusive
    get whose reply was lost can fail while the lock itself reached the promoted replica; left
    alone, that session would wait the full STATEMODES_LOCK_TIMEOUT. A daemon thread (started
    on demand, also in a forked child) retries a plain release, by lock id or by the exclusive
    get's token, every RELEASE_RETRY seconds until it is answered or the lock timeout has
    passed anyway. A release of a lock that is not (or no longer) that one does nothing.
    """

    def __init__(self, release: Callable[[str, str, str], Any]) -> None:
        self._release = release
        self._pending: deque[tuple[str, str, str, float]] = deque(maxlen=RELEASE_BACKLOG)
        self._mutex = threading.Lock()
        self._pid = 0  # the process whose thread is running, 0 when none is
        self.released = 0  # releases that reached the store: the tests count them

    def add(self, session_key: str, lock: str, token: str) -> None:
        deadline = time.monotonic() + conf.STATEMODES_LOCK_TIMEOUT
        with self._mutex:
            self._pending.append((session_key, lock, token, deadline))
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(
                    target=self._run, name="statemodes-redis-releaser", daemon=True
                ).start()

    def pending(self) -> int:
        with self._mutex:
            return len(self._pending)

    def _run(self) -> None:
        while True:
            with self._mutex:
                batch = list(self._pending)
                self._pending.clear()
                if not batch:
                    self._pid = 0
                    return
            retry = []
            for number, (session_key, lock, token, _deadline) in enumerate(batch):
                try:
                    self._release(session_key, lock, token)
                    self.released += 1
                except Exception:  # still failing over: again, until the lock timed out
                    # One failure says the store is still away: the rest wait for the next
                    # round too, so an outage costs one attempt per round, not one per lock.
                    now = time.monotonic()
                    retry = [entry for entry in batch[number:] if entry[3] > now]
                    break
            with self._mutex:
                self._pending.extendleft(reversed(retry))
            if retry:
                time.sleep(RELEASE_RETRY)


class _Subscriber:
    """The process's one PUBSUB connection to one server, read by a daemon thread.

    It feeds ``Wakeups``: a message on the channel is the key of a session whose lock ended.
    Started on the first wait of a process (and again in a forked child, which inherits no
    thread); ``ready`` is set while it is subscribed. After a reconnect it wakes every waiter,
    since a release may have been published while it was away.
    """

    def __init__(self, connect: Callable[[], Redis], channel: str, wakeups: Wakeups) -> None:
        self._connect, self.channel, self._wakeups = connect, channel, wakeups
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._pid = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._pid == os.getpid() and not self._stop.is_set():
            return
        with self._mutex:
            if self._pid == os.getpid() or self._stop.is_set():
                return
            self.ready = threading.Event()  # a forked child's copy may say "set"
            self._thread = threading.Thread(
                target=self._run, name=f"statemodes-redis-{self.channel}", daemon=True
            )
            self._thread.start()
            self._pid = os.getpid()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        pause = 0.05
        while not self._stop.is_set():
            pubsub: Any = None
            try:
                pubsub = self._connect().pubsub()
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=SUBSCRIBER_POLL)
                    if message is None:
                        continue
                    if message["type"] == "message":
                        self._wakeups.wake(message["data"].decode())
                    elif message["type"] == "subscribe":
                        self.ready.set()
                        pause = 0.05
                        self._wakeups.wake_all()  # releases published while away are lost
            except Exception:  # Redis down or restarting: waiters fall back to re-checking
                self.ready.clear()
                self._stop.wait(pause)
                pause = min(pause * 2, 2.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass
        self.ready.clear()


class RedisProvider(SessionStateProvider):
    """Session state in Redis, reached through a django-redis cache alias.

    Options (``STATEMODES_CUSTOM_PROVIDER_OPTIONS``): ``cache_alias`` (default
    ``STATEMODES_REDIS_ALIAS``), ``key_prefix`` (default ``"statemodes"``) and ``end_grace``
    (seconds an expired session's data is kept for ``session_end``, default 3600).
    """

    #: A set per user beside the sessions' hashes (see the module's docstring).
    indexes_users: ClassVar[bool] = True

    settings: ClassVar[frozenset[str]] = frozenset(
        {
            "CACHES",
            "STATEMODES_REDIS_ALIAS",
            "STATEMODES_APPLICATION_NAME",
            "STATEMODES_MAX_CONNECTIONS",
            "STATEMODES_CONNECTION_WAIT",
        }
    )

    def __init__(
        self,
        *,
        cache_alias: str | None = None,
        key_prefix: str = "statemodes",
        end_grace: int = 3600,
    ) -> None:
        super().__init__(cache_alias=cache_alias, key_prefix=key_prefix, end_grace=end_grace)
        self.end_grace = int(end_grace)
        self.cache_alias = cache_alias or conf.STATEMODES_REDIS_ALIAS
        # Redis Cluster: OPTIONS["CLUSTER"] on the alias (django-redis ignores the key).
        self.cluster = is_cluster_alias(self.cache_alias)
        self.namespace = f"{key_prefix}:{conf.STATEMODES_APPLICATION_NAME}:"
        self.expiry_key = self.namespace + "expiry"
        self.channel = self.namespace + "released"
        self.max_connections = conf.STATEMODES_MAX_CONNECTIONS
        self.connection_wait = conf.STATEMODES_CONNECTION_WAIT
        self._scripts = _compile(int(end_grace) * 1000)
        self._mutex = threading.Lock()
        self._connected = False
        self._servers: dict[str, _Server] = {}
        self._primary: _Server | None = None
        self._shard_of: Callable[[str], str] | None = None  # ShardClient's hash ring
        # Sentinel only: django-redis's pool finds the primary; these bound our use of it.
        self._gate: threading.BoundedSemaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._aclients: PerLoop[dict[str, Any]] = PerLoop(self._async_clients)
        self._loop_clients: list[tuple[asyncio.AbstractEventLoop, dict[str, Any]]] = []
        self.wakeups = Wakeups()
        self._releaser = _Releaser(functools.partial(self._run, "release"))

    # Connections: built once from the alias's settings (see docs/redis.md, "Connections").

    def _connect(self) -> None:
        with self._mutex:
            if self._connected:
                return
            client = _django_redis_client(self.cache_alias)
            factory = client.connection_factory
            if self.cluster:
                self._connect_cluster(client)
                self._connected = True
                return
            sentinel = isinstance(factory, SentinelConnectionFactory)
            sharded = hasattr(client, "get_server_name") and hasattr(client, "_serverdict")
            if sharded:  # ShardClient: one server per key, by django-redis's hash ring
                names = list(client._serverdict)
                self._shard_of = client.get_server_name
            else:  # the first LOCATION is the primary (django-redis's write=True)
                names = [client._server[0]]
            if sentinel:
                self._gate = threading.BoundedSemaphore(self.max_connections)
            for name in names:
                if sentinel:
                    # write=True: the primary, never a replica (every read slides the expiry).
                    sync = client._serverdict[name] if sharded else client.get_client(write=True)
                    params = None
                    subscriber = _Subscriber(
                        functools.partial(_same, sync), self.channel, self.wakeups
                    )
                else:
                    params = _connection_params(factory, name)
                    pool = _BlockingPool.from_url(
                        **params, max_connections=self.max_connections, timeout=self.connection_wait
                    )
                    sync = Redis(connection_pool=pool)
                    subscriber = _Subscriber(
                        functools.partial(_subscriber_client, params), self.channel, self.wakeups
                    )
                self._servers[name] = _Server(name, sync, params, subscriber)
            if not sharded:
                self._primary = self._servers[names[0]]
            self._connected = True

    def _connect_cluster(self, client: Any) -> None:
        """One cluster client for all of LOCATION's nodes (startup nodes), bounded per node."""
        urls = list(client._server)
        params = {**_connection_params(client.connection_factory, urls[0]), "urls": urls}
        pool = functools.partial(
            _BlockingPool, max_connections=self.max_connections, timeout=self.connection_wait
        )
        with self._unavailable():  # redis-py asks a startup node for the slot map at once
            sync = redis_cluster.cluster_client(params, pool)
        connect = functools.partial(
            redis_cluster.node_client, sync, params, health_check_interval=SUBSCRIBER_HEALTH_CHECK
        )
        subscriber = _Subscriber(connect, self.channel, self.wakeups)
        self._primary = _Server("cluster", sync, params, subscriber, cluster=True)
        self._servers = {"cluster": self._primary}

    def _server(self, item_key: str) -> _Server:
        if not self._connected:
            self._connect()
        if self._primary is not None:
            return self._primary
        assert self._shard_of is not None
        return self._servers[self._shard_of(item_key)]

    def _async_clients(self) -> dict[str, Any]:
        """This event loop's clients (redis.asyncio binds a connection to its loop)."""
        # asyncio.run() and async_to_sync end their loops without closing our connections, and
        # a closed loop can never close them: shut their sockets down here, when a new loop
        # comes, so that Redis drops them now and not whenever the garbage collector runs.
        for loop, dead in [entry for entry in self._loop_clients if entry[0].is_closed()]:
            self._loop_clients.remove((loop, dead))
            for aclient in dead.values():
                _shut_down(aclient)
        clients: dict[str, Any] = {}
        for server in self._servers.values():
            if server.cluster:
                assert server.params is not None
                clients[server.name] = redis_cluster.async_cluster_client(
                    server.params, self.max_connections
                )
            elif server.params is not None:
                params = {k: v for k, v in server.params.items() if k != "parser_class"}
                pool = _AsyncBlockingPool.from_url(
                    **params, max_connections=self.max_connections, timeout=self.connection_wait
                )
                clients[server.name] = AsyncRedis(connection_pool=pool)
        self._loop_clients.append((asyncio.get_running_loop(), clients))
        return clients

    def _thread_pool(self) -> ThreadPoolExecutor:
        # Sentinel's async path: a small executor of our own, never the loop's default one
        # (which Django's sync_to_async and every other library share).
        with self._mutex:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.max_connections, thread_name_prefix="statemodes-redis"
                )
            return self._executor

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        try:
            yield
        except MaxConnectionsError as exc:  # redis.asyncio's cluster pools do not wait
            raise exhausted(f"Redis Cluster ({self.cache_alias})", self.max_connections, 0) from exc
        except UNAVAILABLE as exc:
            hint = ""
            if not self.cluster and isinstance(exc, (AskError, ClusterError)):
                hint = (
                    " This Redis is a Redis Cluster node: set OPTIONS['CLUSTER'] = True on "
                    "the alias (check django_statemodes.E055)."
                )
            raise SessionStoreUnavailable(
                f"Unable to make the session state request to Redis (cache alias "
                f"{self.cache_alias!r}): {exc}. Check that Redis is running and that "
                f"STATEMODES_REDIS_ALIAS names the right CACHES entry.{hint}",
                setting="STATEMODES_REDIS_ALIAS",
            ) from exc

    @contextmanager
    def _ending(self, session_key: str, lock: str, token: str = "") -> Iterator[None]:
        """Hand the lock to the releaser if this call, which ends or takes it, fails."""
        try:
            yield
        except SessionStoreUnavailable:
            if lock or token:
                self._releaser.add(session_key, lock, token)
            raise

    # One script call, in three steps: _call builds it (keys and arguments, shared), _eval or
    # _aeval runs it, the caller reads the reply (shared). EVALSHA, one round trip; the script
    # is loaded only when the server lacks it (first use, or after a restart or failover
    # emptied its script cache).

    def _call(
        self, name: str, session_key: str | None, args: tuple[Any, ...]
    ) -> tuple[str, list[str], list[Any]] | None:
        if not isinstance(session_key, str):
            return None  # exists(None) and friends: Django asks about keys not made yet
        item, expiry = self._keys(session_key)
        if name in ("set", "remove"):  # they also index the item in the expiry set
            return item, [item, expiry], [session_key, *args]
        return item, [item], list(args)

    def _keys(self, session_key: str) -> tuple[str, str]:
        """A session's hash and its expiry set: in one hash slot in Cluster mode."""
        if self.cluster:
            tag = redis_cluster.bucket(session_key)
            return f"{self.namespace}s:{{{tag}}}{session_key}", f"{self.expiry_key}:{{{tag}}}"
        return f"{self.namespace}s:{{{session_key}}}", self.expiry_key

    def _eval(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        sha, source = self._scripts[name]
        if self._gate is not None and not self._gate.acquire(timeout=self.connection_wait):
            raise exhausted(
                f"Redis ({self.cache_alias})", self.max_connections, self.connection_wait
            )
        try:
            try:
                return client.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            except NoScriptError:
                client.script_load(source)
                return client.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        finally:
            if self._gate is not None:
                self._gate.release()

    async def _aeval(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        sha, source = self._scripts[name]
        try:
            return await client.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(source)
            return await client.execute_command("EVALSHA", sha, len(keys), *keys, *args)

    def _run(self, name: str, session_key: str | None, *args: Any) -> Any:
        call = self._call(name, session_key, args)
        if call is None:
            return None
        item, keys, argv = call
        with self._unavailable():
            return self._eval(self._server(item).client, name, keys, argv)

    async def _arun(self, name: str, session_key: str | None, *args: Any) -> Any:
        call = self._call(name, session_key, args)
        if call is None:
            return None
        item, keys, argv = call
        server = self._server(item)
        if server.params is None:  # Sentinel: the blocking client, in our own threads
            loop = asyncio.get_running_loop()
            run = functools.partial(self._run, name, session_key, *args)
            return await loop.run_in_executor(self._thread_pool(), run)
        with self._unavailable():
            return await self._aeval(self._aclients.get()[server.name], name, keys, argv)

    # Arguments and replies, shared by the sync and async twins.

    @staticmethod
    def _item(reply: bytes | None) -> StateItem | None:
        if reply is None:
            return None
        head, _, data = reply.partition(b"\n")
        locked, lock_id, age, _timeout, initialize, has_data = map(int, head.split())
        return StateItem(
            data=data if has_data else None,
            locked=bool(locked),
            lock_id=lock_id,
            lock_age=age / 1000,
            initialize=bool(initialize),
        )

    @staticmethod
    def _set_args(
        data: Any, lock_id: int | None, timeout: int, new_item: bool, keep_lock: bool
    ) -> tuple[Any, ...]:
        if not isinstance(data, bytes):
            raise TypeError(f"RedisProvider stores bytes payloads, not {type(data).__name__}")
        lock = "" if lock_id is None else str(int(lock_id))
        flags = ("1" if new_item else "0") + ("0" if keep_lock else "1") + "0"
        return data, lock, str(int(timeout)), flags, _token()

    @staticmethod
    def _ends_lock(lock_id: int | None, keep_lock: bool) -> str:
        """The lock a save ends ('' if it ends none), for the releaser."""
        return "" if lock_id is None or keep_lock else str(int(lock_id))

    @staticmethod
    def _lock_arg(lock_id: int | None) -> str:
        return "" if lock_id is None else str(int(lock_id))

    # The contract.

    def get(self, session_key: str) -> StateItem | None:
        return self._item(self._run("get", session_key, "0", ""))

    def get_exclusive(self, session_key: str) -> StateItem | None:
        token = _token()
        with self._ending(session_key, "", token):
            return self._item(self._run("get", session_key, "1", token))

    def set_and_release(
        self,
        session_key: str,
        data: Any,
        *,
        lock_id: int | None,
        timeout: int,
        new_item: bool = False,
        keep_lock: bool = False,
    ) -> bool:
        args = self._set_args(data, lock_id, timeout, new_item, keep_lock)
        with self._ending(session_key, self._ends_lock(lock_id, keep_lock)):
            return bool(self._run("set", session_key, *args))

    def release(self, session_key: str, lock_id: int) -> None:
        lock = self._lock_arg(lock_id)
        with self._ending(session_key, lock):
            self._run("release", session_key, lock, "")

    def remove(self, session_key: str, lock_id: int | None = None) -> bool:
        reply = self._run("remove", session_key, self._lock_arg(lock_id), self._unindex)
        if isinstance(reply, bytes):  # a cluster: the member is taken out here
            with self._unavailable():
                self._server(self._keys(session_key)[0]).client.srem(
                    self._user_set(reply.decode()), session_key
                )
        return bool(reply)

    def create_uninitialized(self, session_key: str, timeout: int) -> bool:
        return bool(self._run("set", session_key, b"", "", str(int(timeout)), "101", _token()))

    def purge_expired(
        self,
        *,
        on_expired: Callable[[ExpiredItem], None] | None = None,
        dry_run: bool = False,
        batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        batch = batch_size or conf.STATEMODES_PURGE_BATCH_SIZE
        want_data = "1" if on_expired is not None else "0"
        tail = [self.channel, str(batch), want_data]
        total = 0
        if not self._connected:
            self._connect()
        # (client, expiry set, what comes before and after a session key in its item's key)
        if self.cluster:  # one expiry set per bucket, each in its bucket's slot
            assert self._primary is not None
            client = self._primary.client
            sets = [
                (client, f"{self.expiry_key}:{{{tag}}}", f"{self.namespace}s:{{{tag}}}", "")
                for tag in redis_cluster.tags()
            ]
        else:  # one per server (several with django-redis's ShardClient)
            prefix = self.namespace + "s:{"
            sets = [(s.client, self.expiry_key, prefix, "}") for s in self._servers.values()]
        with self._unavailable():
            for client, expiry, before, after in sets:
                args = [before, after, *tail]
                if dry_run:
                    total += int(self._eval(client, "purge", [expiry], [*args, "1", "0"]))
                    continue
                unindex = "0" if self.cluster else "1"
                while True:  # one batch per script run: Redis is never blocked for long
                    reply = self._eval(client, "purge", [expiry], [*args, "0", unindex])
                    pairs = list(zip(reply[::2], reply[1::2], strict=True))
                    total += len(pairs)
                    if on_expired is not None:
                        for key, data in pairs:
                            on_expired(ExpiredItem(key.decode(), data))
                    if on_batch is not None:
                        on_batch(total)
                    if len(pairs) < batch:
                        break
        return total

    # Waiting: PUBLISH on release, heard by one subscriber thread per server and process.
    # A waiter registers with Wakeups first, then looks at the lock once more (_WATCH, which
    # also flags the item so that its release publishes): a release before that look is seen
    # by it, one after it is published and reaches the registered waiter. No wake-up is lost,
    # and a waiter holds no connection while it sleeps.

    def _subscribed(self, session_key: str) -> _Subscriber:
        subscriber = self._server(self._keys(session_key)[0]).subscriber
        subscriber.start()
        return subscriber

    def wait_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        if timeout <= 0:
            return
        subscriber = self._subscribed(session_key)
        with self.wakeups.expecting(session_key) as woken:
            if not subscriber.ready.wait(min(timeout, FALLBACK_SLEEP)):
                return  # not subscribed (starting, or Redis down): the core looks again
            if self._run("watch", session_key, str(int(lock_id))):
                woken.wait(min(timeout, MAX_BLOCK))

    async def await_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        if timeout <= 0:
            return
        subscriber = self._subscribed(session_key)
        async with self.wakeups.aexpecting(session_key) as woken:
            if not subscriber.ready.is_set():
                await asyncio.sleep(min(timeout, FALLBACK_SLEEP))
                return
            if await self._arun("watch", session_key, str(int(lock_id))):
                await asyncio.wait([woken], timeout=min(timeout, MAX_BLOCK))

    # Async twins: redis.asyncio on this loop's bounded pool (see _arun).

    async def aget(self, session_key: str) -> StateItem | None:
        return self._item(await self._arun("get", session_key, "0", ""))

    async def aget_exclusive(self, session_key: str) -> StateItem | None:
        token = _token()
        with self._ending(session_key, "", token):
            return self._item(await self._arun("get", session_key, "1", token))

    async def aset_and_release(
        self,
        session_key: str,
        data: Any,
        *,
        lock_id: int | None,
        timeout: int,
        new_item: bool = False,
        keep_lock: bool = False,
    ) -> bool:
        args = self._set_args(data, lock_id, timeout, new_item, keep_lock)
        with self._ending(session_key, self._ends_lock(lock_id, keep_lock)):
            return bool(await self._arun("set", session_key, *args))

    async def arelease(self, session_key: str, lock_id: int) -> None:
        lock = self._lock_arg(lock_id)
        with self._ending(session_key, lock):
            await self._arun("release", session_key, lock, "")

    async def aremove(self, session_key: str, lock_id: int | None = None) -> bool:
        reply = await self._arun("remove", session_key, self._lock_arg(lock_id), self._unindex)
        if isinstance(reply, bytes):
            await self._apipeline(
                self._keys(session_key)[0], [("SREM", self._user_set(reply.decode()), session_key)]
            )
        return bool(reply)

    # The index of sessions by user. Each operation is the same steps for both twins: a
    # script on the session's hash (_run/_arun), then pipelined commands (_pipeline /
    # _apipeline) built and read by shared helpers.

    async def abind_user(
        self, session_key: str, user_id: str, *, ip: str | None, user_agent: str | None
    ) -> bool:
        args = self._bind_args(user_id, ip, user_agent)
        reply = await self._arun("bind", session_key, *args)
        if reply is None:
            return False
        item = self._keys(session_key)[0]
        previous, ttl = self._bound(reply)
        index = self._index_call(session_key, user_id, ttl)
        await self._arun_on(item, "index", *index)
        if previous and previous != user_id:
            await self._apipeline(item, [("SREM", self._user_set(previous), session_key)])
        return True

    async def atouch_user(
        self, session_key: str, *, ip: str | None, user_agent: str | None
    ) -> None:
        await self._arun("touch", session_key, *self._touch_args(ip, user_agent))

    async def aunbind_user(self, session_key: str) -> None:
        previous = await self._arun("unbind", session_key)
        if previous:
            item = self._keys(session_key)[0]
            await self._apipeline(item, [("SREM", self._user_set(previous.decode()), session_key)])

    async def auser_sessions(self, user_id: str) -> list[SessionInfo]:
        check_user_id(user_id)
        sessions: list[SessionInfo] = []
        for server in self._index_servers():
            key = self._user_set(user_id)
            members, now = await self._apipeline_on(server, [("SMEMBERS", key), ("TIME",)])
            keys = sorted(m.decode() for m in members)
            rows = await self._apipeline_on(server, self._row_commands(keys))
            found, dead = self._rows(keys, rows, self._now_ms(now), user_id)
            if dead:
                await self._apipeline_on(server, [("SREM", key, *dead)])
            sessions += found
        return sessions

    async def alist_sessions(
        self, *, user_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SessionInfo], int]:
        offset, limit = max(0, offset), max(0, limit)
        if user_id is not None:
            sessions = await self.auser_sessions(user_id)
            return sessions[offset : offset + limit], len(sessions)
        page: list[SessionInfo] = []
        total = 0
        for server, sets in self._expiry_sets():
            counts = await self._apipeline_on(server, [("ZCARD", z) for z in sets])
            wanted = self._page_ranges(sets, counts, offset - total, limit - len(page))
            total += sum(counts)
            if not wanted:
                continue
            ranges = await self._apipeline_on(server, [("ZRANGE", *r) for r in wanted])
            keys = [m.decode() for members in ranges for m in members]
            replies = await self._apipeline_on(server, [("TIME",), *self._row_commands(keys)])
            found, _ = self._rows(keys, replies[1:], self._now_ms(replies[0]), None)
            page += found
        return page, total

    def bind_user(
        self, session_key: str, user_id: str, *, ip: str | None, user_agent: str | None
    ) -> bool:
        args = self._bind_args(user_id, ip, user_agent)
        reply = self._run("bind", session_key, *args)
        if reply is None:
            return False
        item = self._keys(session_key)[0]
        previous, ttl = self._bound(reply)
        self._run_on(item, "index", *self._index_call(session_key, user_id, ttl))
        if previous and previous != user_id:
            self._pipeline(item, [("SREM", self._user_set(previous), session_key)])
        return True

    def touch_user(self, session_key: str, *, ip: str | None, user_agent: str | None) -> None:
        self._run("touch", session_key, *self._touch_args(ip, user_agent))

    def unbind_user(self, session_key: str) -> None:
        previous = self._run("unbind", session_key)
        if previous:
            item = self._keys(session_key)[0]
            self._pipeline(item, [("SREM", self._user_set(previous.decode()), session_key)])

    def user_sessions(self, user_id: str) -> list[SessionInfo]:
        check_user_id(user_id)
        sessions: list[SessionInfo] = []
        for server in self._index_servers():
            key = self._user_set(user_id)
            members, now = self._pipeline_on(server, [("SMEMBERS", key), ("TIME",)])
            keys = sorted(m.decode() for m in members)
            rows = self._pipeline_on(server, self._row_commands(keys))
            found, dead = self._rows(keys, rows, self._now_ms(now), user_id)
            if dead:
                self._pipeline_on(server, [("SREM", key, *dead)])
            sessions += found
        return sessions

    def list_sessions(
        self, *, user_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SessionInfo], int]:
        offset, limit = max(0, offset), max(0, limit)
        if user_id is not None:
            sessions = self.user_sessions(user_id)
            return sessions[offset : offset + limit], len(sessions)
        page: list[SessionInfo] = []
        total = 0
        for server, sets in self._expiry_sets():
            counts = self._pipeline_on(server, [("ZCARD", z) for z in sets])
            wanted = self._page_ranges(sets, counts, offset - total, limit - len(page))
            total += sum(counts)
            if not wanted:
                continue
            ranges = self._pipeline_on(server, [("ZRANGE", *r) for r in wanted])
            keys = [m.decode() for members in ranges for m in members]
            replies = self._pipeline_on(server, [("TIME",), *self._row_commands(keys)])
            found, _ = self._rows(keys, replies[1:], self._now_ms(replies[0]), None)
            page += found
        return page, total

    # The index's shared steps.

    @property
    def _unindex(self) -> str:
        """REMOVE's third argument: '1' when its script can reach the user's set."""
        return "0" if self.cluster else "1"

    def _user_set(self, user_id: str) -> str:
        return f"{self.namespace}u:{{{user_id}}}"

    @staticmethod
    def _bind_args(user_id: str, ip: str | None, user_agent: str | None) -> tuple[str, ...]:
        check_user_id(user_id)
        ip = None if ip is None else ip[:MAX_IP_LENGTH]
        user_agent = None if user_agent is None else user_agent[:MAX_USER_AGENT_LENGTH]
        flags = ("0" if ip is None else "1") + ("0" if user_agent is None else "1")
        return user_id, ip or "", user_agent or "", flags

    @staticmethod
    def _touch_args(ip: str | None, user_agent: str | None) -> tuple[str, ...]:
        ip = None if ip is None else ip[:MAX_IP_LENGTH]
        user_agent = None if user_agent is None else user_agent[:MAX_USER_AGENT_LENGTH]
        flags = ("0" if ip is None else "1") + ("0" if user_agent is None else "1")
        return ip or "", user_agent or "", flags

    @staticmethod
    def _bound(reply: list[Any]) -> tuple[str, int]:
        """BIND's reply: the previous owner ('' if none) and the session's timeout (s)."""
        previous, timeout = reply
        return previous.decode() if isinstance(previous, bytes) else "", int(timeout or 0)

    def _index_call(self, session_key: str, user_id: str, timeout: int) -> tuple[str, ...]:
        """The user's set and INDEX's arguments: the member and how long it may live (ms)."""
        ttl = (timeout + self.end_grace) * 1000
        return self._user_set(user_id), session_key, str(ttl)

    def _index_servers(self) -> list[_Server]:
        """Where a user's sets are: the one server (or cluster), or every shard."""
        if not self._connected:
            self._connect()
        return list(self._servers.values())

    def _expiry_sets(self) -> list[tuple[_Server, list[str]]]:
        """Every expiry set (each lists its server's sessions), by server."""
        if not self._connected:
            self._connect()
        if self.cluster:
            assert self._primary is not None
            return [(self._primary, [f"{self.expiry_key}:{{{t}}}" for t in redis_cluster.tags()])]
        return [(server, [self.expiry_key]) for server in self._servers.values()]

    @staticmethod
    def _page_ranges(
        sets: list[str], counts: list[int], offset: int, limit: int
    ) -> list[tuple[str, int, int]]:
        """ZRANGE (set, start, stop) calls for ``limit`` members after ``offset`` of ``sets``."""
        wanted: list[tuple[str, int, int]] = []
        for key, count in zip(sets, counts, strict=True):
            if limit <= 0:
                break
            if offset >= count:
                offset -= count
                continue
            start = max(0, offset)
            stop = min(count, start + limit) - 1
            wanted.append((key, start, stop))
            limit -= stop - start + 1
            offset = 0
        return wanted

    def _row_commands(self, keys: list[str]) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        for key in keys:
            item = self._keys(key)[0]
            commands.append(("HMGET", item, *_ROW_FIELDS))
            commands.append(("HSTRLEN", item, "d"))
        return commands

    @staticmethod
    def _now_ms(reply: Any) -> int:
        seconds, micros = reply if isinstance(reply, (list, tuple)) else (reply, 0)
        return int(seconds) * 1000 + int(micros) // 1000

    @staticmethod
    def _rows(
        keys: list[str], replies: list[Any], now: int, user_id: str | None
    ) -> tuple[list[SessionInfo], list[str]]:
        """SessionInfo of the live ``keys`` (of ``user_id`` if given), and the dead ones."""
        found: list[SessionInfo] = []
        dead: list[str] = []
        for index, key in enumerate(keys):
            fields, size = replies[2 * index], replies[2 * index + 1]
            ex, owner, created, seen, ip, agent, locked, lock_date = (
                None if value is None else value.decode() for value in fields
            )
            if ex is None or int(ex) <= now or (user_id is not None and owner != user_id):
                dead.append(key)
                continue
            found.append(
                SessionInfo(
                    session_key=key,
                    user_id=owner or "",
                    created=int(created or 0) / 1000,
                    last_seen=int(seen or 0) / 1000,
                    expires=int(ex) / 1000,
                    ip=ip,
                    user_agent=agent,
                    locked=locked == "1",
                    lock_age=(now - int(lock_date or now)) / 1000 if locked == "1" else 0.0,
                    size=int(size or 0),
                )
            )
        return found, dead

    def _run_on(self, item: str, name: str, key: str, *args: Any) -> Any:
        """Run script ``name`` on ``key`` (not a session's hash), on ``item``'s server."""
        with self._unavailable():
            return self._eval(self._server(item).client, name, [key], list(args))

    async def _arun_on(self, item: str, name: str, key: str, *args: Any) -> Any:
        server = self._server(item)
        if server.params is None:  # Sentinel: the blocking client, in our own threads
            loop = asyncio.get_running_loop()
            run = functools.partial(self._run_on, item, name, key, *args)
            return await loop.run_in_executor(self._thread_pool(), run)
        with self._unavailable():
            return await self._aeval(self._aclients.get()[server.name], name, [key], list(args))

    def _pipeline(self, item: str, commands: list[tuple[Any, ...]]) -> list[Any]:
        return self._pipeline_on(self._server(item), commands)

    async def _apipeline(self, item: str, commands: list[tuple[Any, ...]]) -> list[Any]:
        return await self._apipeline_on(self._server(item), commands)

    def _pipeline_on(self, server: _Server, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one pipeline (per node in a cluster); return their replies."""
        if not commands:
            return []
        with self._unavailable():
            client = server.client
            pipe = client.pipeline() if server.cluster else client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(pipe.execute())

    async def _apipeline_on(self, server: _Server, commands: list[tuple[Any, ...]]) -> list[Any]:
        if not commands:
            return []
        if server.params is None:  # Sentinel: the blocking client, in our own threads
            loop = asyncio.get_running_loop()
            run = functools.partial(self._pipeline_on, server, commands)
            return await loop.run_in_executor(self._thread_pool(), run)
        with self._unavailable():
            client = self._aclients.get()[server.name]
            pipe = client.pipeline() if server.cluster else client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute())

    def close(self) -> None:
        # Our pools and threads; django-redis keeps its own (Sentinel's) pools.
        with self._mutex:
            servers, self._servers = list(self._servers.values()), {}
            self._connected = False
            self._primary = None
            self._shard_of = None
            executor, self._executor = self._executor, None
        for server in servers:
            server.subscriber.stop()
            if server.cluster:
                server.client.close()
            elif server.params is not None:
                server.client.connection_pool.disconnect()
        self._aclients.clear()
        loops, self._loop_clients = self._loop_clients, []
        for _, clients in loops:
            for aclient in clients.values():
                _shut_down(aclient)
        if executor is not None:
            executor.shutdown(wait=False)
        self.wakeups.wake_all()


def _connection_params(factory: Any, url: str) -> dict[str, Any]:
    """redis-py's connection kwargs for ``url`` as django-redis builds them for the alias.

    ``make_connection_params`` gives the URL (its scheme picks TCP, TLS or a Unix socket),
    USERNAME, PASSWORD, SOCKET_TIMEOUT, SOCKET_CONNECT_TIMEOUT and the parser;
    CONNECTION_POOL_KWARGS adds the rest, except the pool's own size and wait, which
    STATEMODES_MAX_CONNECTIONS and STATEMODES_CONNECTION_WAIT set.
    """
    params: dict[str, Any] = dict(factory.make_connection_params(url))
    for key, value in factory.pool_cls_kwargs.items():
        if key not in ("max_connections", "timeout", "connection_class"):
            params[key] = value
    return params


def _shut_down(client: Any) -> None:
    """Shut down the sockets of an async client whose loop may be gone (no await needed)."""
    if hasattr(client, "get_nodes"):  # a cluster client: each node's connections
        connections = [c for node in client.get_nodes() for c in node._connections]
    else:
        pool: Any = client.connection_pool
        connections = [*pool._available_connections, *pool._in_use_connections]
    for connection in connections:
        writer = getattr(connection, "_writer", None)
        sock = writer.get_extra_info("socket") if writer is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the fd itself goes with the transport
            except OSError:
                pass


def _token() -> str:
    """A call's token: 16 random hex digits (its first four also grow the lock id)."""
    return os.urandom(8).hex()


def is_cluster_alias(alias: str) -> bool:
    """True when the alias's OPTIONS say ``"CLUSTER": True`` (missing aliases: False)."""
    from django.conf import settings

    config = settings.CACHES.get(alias)
    return isinstance(config, dict) and bool((config.get("OPTIONS") or {}).get("CLUSTER"))


def _same(client: Redis) -> Redis:
    return client


def _subscriber_client(params: dict[str, Any]) -> Redis:
    # A client of its own, outside the bounded pool: one connection, held for good. The
    # health check PINGs a silent connection, so a dead server is noticed within it.
    return Redis.from_url(**params, health_check_interval=SUBSCRIBER_HEALTH_CHECK)
