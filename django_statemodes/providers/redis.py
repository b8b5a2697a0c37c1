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

Waiters are woken without polling: a release pushes a token on ``<prefix>:<application>:w:{key}``
(a list that expires after ``WAKE_TTL_MS``) in the same script, and a waiter blocks on it with
BLPOP. A release that happens between the waiter's exclusive get and its BLPOP leaves the token
in the list, so no wake-up is lost.

The ``{key}`` hash tags put a session's hash and wake-up list on the same shard of django-redis's
``ShardClient``; each shard keeps its own expiry set.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from django_statemodes.conf import conf
from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.providers.base import ExpiredItem, SessionStateProvider, StateItem

__all__ = ["RedisProvider"]

# How long a release's wake-up token waits for a waiter that has not reached BLPOP yet.
WAKE_TTL_MS = 5000
# Longest single BLPOP: a waiter re-checks the lock at least this often, whatever happens.
MAX_BLOCK = 5.0

# Errors that mean "the store cannot be reached now" (503), not a bug. ReadOnlyError is a
# replica answering during a Sentinel failover, before the client has found the new primary.
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)

# Shared Lua: the server's clock in ms, the slide of an item's expiry by its timeout and the
# wake-up of a waiter. KEYS[1] is always the item hash; @GRACE_MS@ is the provider's end_grace.
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
local function wake(list)
  redis.call('DEL', list)
  redis.call('RPUSH', list, '1')
  redis.call('PEXPIRE', list, @WAKE_TTL_MS@)
end
"""

# ARGV[1]: '1' for an exclusive get. Returns nil, or one string: a header line
# "locked lock_id lock_age_ms timeout initialize has_data" and then the payload. One bulk
# string instead of an array: far less for the client to parse. An exclusive get of an item
# held by another request returns the header alone (the holder's lock id and lock age).
_GET = """
local f = redis.call('HMGET', KEYS[1], 'ex', 'to', 'lk', 'lid', 'lt', 'in', 'd')
if not f[1] or tonumber(f[1]) <= now then return nil end
local to = tonumber(f[2])
local ex = slide(to)
local lid = tonumber(f[4])
local init = 0
if f[6] == '1' then init = 1 end
local age = 0
if f[3] == '1' then
  age = now - tonumber(f[5])
  if ARGV[1] == '1' then
    redis.call('HSET', KEYS[1], 'ex', ex)
    return string.format('1 %d %d %d 0 0\\n', lid, age, to)
  end
  redis.call('HSET', KEYS[1], 'ex', ex, 'in', '0')
elseif ARGV[1] == '1' then
  lid = lid + 1
  redis.call('HSET', KEYS[1], 'ex', ex, 'in', '0', 'lk', '1', 'lid', lid, 'lt', now)
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

# KEYS[2] expiry set, KEYS[3] wake-up list; ARGV[1] session key, ARGV[2] payload, ARGV[3] lock
# id or '', ARGV[4] timeout, ARGV[5] three flags: new item, release, uninitialized (no
# payload). Returns 1 if written, 0 if refused.
_SET = """
local to = tonumber(ARGV[4])
local f = redis.call('HMGET', KEYS[1], 'ex', 'lk', 'lid', 'to')
local live = f[1] and tonumber(f[1]) > now
if string.sub(ARGV[5], 1, 1) == '1' then
  if live then return 0 end
  redis.call('DEL', KEYS[1])
  local ex = now + to * 1000
  if string.sub(ARGV[5], 3, 3) == '1' then
    redis.call('HSET', KEYS[1], 'ex', ex, 'to', to, 'lk', '0', 'lid', 1, 'lt', 0, 'in', '1')
  else
    redis.call('HSET', KEYS[1], 'd', ARGV[2], 'ex', ex, 'to', to, 'lk', '0', 'lid', 1,
               'lt', 0, 'in', '0')
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
  redis.call('HSET', KEYS[1], 'd', ARGV[2], 'ex', ex, 'to', to, 'in', '0', 'lk', '0')
  wake(KEYS[3])
else
  redis.call('HSET', KEYS[1], 'd', ARGV[2], 'ex', ex, 'to', to, 'in', '0')
end
return 1
"""

# KEYS[2] wake-up list; ARGV[1] lock id, or '' to slide the expiry only. Unlocks (if the lock id
# matches) and slides.
_RELEASE = """
local f = redis.call('HMGET', KEYS[1], 'ex', 'to', 'lk', 'lid')
if not f[1] or tonumber(f[1]) <= now then return 0 end
if ARGV[1] == '' then
  redis.call('HSET', KEYS[1], 'ex', slide(tonumber(f[2])))
  return 1
end
if f[3] ~= '1' or tonumber(f[4]) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'ex', slide(tonumber(f[2])), 'lk', '0')
wake(KEYS[2])
return 1
"""

# KEYS[2] expiry set, KEYS[3] wake-up list; ARGV[1] session key, ARGV[2] lock id or ''.
# Deletes the item unless another request holds its lock.
_REMOVE = """
local f = redis.call('HMGET', KEYS[1], 'lk', 'lid')
if not f[1] then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if ARGV[2] ~= '' and f[1] == '1' and tonumber(f[2]) ~= tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if f[1] == '1' then wake(KEYS[3]) end
return 1
"""

# KEYS[1] expiry set; ARGV[1] item key prefix, ARGV[2] wake-up key prefix, ARGV[3] batch size,
# ARGV[4] '1' to return payloads, ARGV[5] '1' for a dry run (count only).
# Returns {session key, payload or nil, ...} for the expired items it removed.
_PURGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[5] == '1' then return redis.call('ZCOUNT', KEYS[1], '-inf', now) end
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, m in ipairs(members) do
  local k = ARGV[1] .. '{' .. m .. '}'
  local f = redis.call('HMGET', k, 'ex', 'lk', 'd')
  if f[1] and tonumber(f[1]) > now then
    redis.call('ZADD', KEYS[1], f[1], m)
  else
    redis.call('ZREM', KEYS[1], m)
    if f[1] then
      redis.call('DEL', k)
      if f[2] == '1' then
        local w = ARGV[2] .. '{' .. m .. '}'
        redis.call('DEL', w)
        redis.call('RPUSH', w, '1')
        redis.call('PEXPIRE', w, @WAKE_TTL_MS@)
      end
    end
    out[#out + 1] = m
    if ARGV[4] == '1' and f[3] then out[#out + 1] = f[3] else out[#out + 1] = false end
  end
end
return out
"""


def _compile(end_grace_ms: int) -> dict[str, tuple[str, str]]:
    """Return ``{name: (sha1, source)}`` of the scripts for one end_grace."""
    scripts = {
        "get": _PRELUDE + _GET,
        "set": _PRELUDE + _SET,
        "release": _PRELUDE + _RELEASE,
        "remove": _PRELUDE + _REMOVE,
        "purge": _PURGE,
    }
    compiled = {}
    for name, source in scripts.items():
        source = source.replace("@GRACE_MS@", str(end_grace_ms))
        source = source.replace("@WAKE_TTL_MS@", str(WAKE_TTL_MS))
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


class RedisProvider(SessionStateProvider):
    """Session state in Redis, reached through a django-redis cache alias.

    Options (``STATEMODES_CUSTOM_PROVIDER_OPTIONS``): ``cache_alias`` (default
    ``STATEMODES_REDIS_ALIAS``), ``key_prefix`` (default ``"statemodes"``) and ``end_grace``
    (seconds an expired session's data is kept for ``session_end``, default 3600).
    """

    settings: ClassVar[frozenset[str]] = frozenset(
        {"CACHES", "STATEMODES_REDIS_ALIAS", "STATEMODES_APPLICATION_NAME"}
    )

    def __init__(
        self,
        *,
        cache_alias: str | None = None,
        key_prefix: str = "statemodes",
        end_grace: int = 3600,
    ) -> None:
        super().__init__(cache_alias=cache_alias, key_prefix=key_prefix, end_grace=end_grace)
        self.cache_alias = cache_alias or conf.STATEMODES_REDIS_ALIAS
        self.namespace = f"{key_prefix}:{conf.STATEMODES_APPLICATION_NAME}:"
        self.expiry_key = self.namespace + "expiry"
        self._scripts = _compile(int(end_grace) * 1000)
        self._mutex = threading.Lock()
        self._connected = False
        self._primary: Redis | None = None
        self._shards: Any = None

    # Connections: resolved once (django-redis shares its pools between threads).

    def _connect(self) -> None:
        with self._mutex:
            if self._connected:
                return
            client = _django_redis_client(self.cache_alias)
            if hasattr(client, "get_server") and hasattr(client, "_serverdict"):
                self._shards = client  # ShardClient: one server per key, by hash ring
            else:
                # write=True: the primary, never a replica (every read slides the expiry).
                self._primary = client.get_client(write=True)
            self._connected = True

    def _server(self, item_key: str) -> Redis:
        if not self._connected:
            self._connect()
        if self._primary is not None:
            return self._primary
        server: Redis = self._shards.get_server(item_key)
        return server

    def _servers(self) -> list[Redis]:
        if not self._connected:
            self._connect()
        if self._primary is not None:
            return [self._primary]
        return list(self._shards._serverdict.values())

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        try:
            yield
        except UNAVAILABLE as exc:
            raise SessionStoreUnavailable(
                f"Unable to make the session state request to Redis (cache alias "
                f"{self.cache_alias!r}): {exc}. Check that Redis is running and that "
                "STATEMODES_REDIS_ALIAS names the right CACHES entry.",
                setting="STATEMODES_REDIS_ALIAS",
            ) from exc

    def _eval(self, server: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        # EVALSHA, one round trip; the script is loaded only when the server lacks it (first
        # use, or after a restart or failover emptied its script cache).
        sha, source = self._scripts[name]
        try:
            return server.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            server.script_load(source)
            return server.execute_command("EVALSHA", sha, len(keys), *keys, *args)

    def _run(self, name: str, session_key: str | None, *args: Any) -> Any:
        if not isinstance(session_key, str):
            return None  # exists(None) and friends: Django asks about keys not made yet
        tag = "{" + session_key + "}"
        item = f"{self.namespace}s:{tag}"
        if name == "get":
            keys = [item]
        elif name == "release":
            keys = [item, f"{self.namespace}w:{tag}"]
        else:  # set and remove also index the item in the expiry set
            keys = [item, self.expiry_key, f"{self.namespace}w:{tag}"]
            args = (session_key, *args)
        with self._unavailable():
            return self._eval(self._server(item), name, keys, list(args))

    # The contract.

    def _item(self, reply: bytes | None) -> StateItem | None:
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

    def get(self, session_key: str) -> StateItem | None:
        return self._item(self._run("get", session_key, "0"))

    def get_exclusive(self, session_key: str) -> StateItem | None:
        return self._item(self._run("get", session_key, "1"))

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
        if not isinstance(data, bytes):
            raise TypeError(f"RedisProvider stores bytes payloads, not {type(data).__name__}")
        lock = "" if lock_id is None else str(int(lock_id))
        flags = ("1" if new_item else "0") + ("0" if keep_lock else "1") + "0"
        return bool(self._run("set", session_key, data, lock, str(int(timeout)), flags))

    def release(self, session_key: str, lock_id: int) -> None:
        self._run("release", session_key, str(int(lock_id)))

    def remove(self, session_key: str, lock_id: int | None = None) -> bool:
        lock = "" if lock_id is None else str(int(lock_id))
        return bool(self._run("remove", session_key, lock))

    def create_uninitialized(self, session_key: str, timeout: int) -> bool:
        return bool(self._run("set", session_key, b"", "", str(int(timeout)), "101"))

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
        args = [self.namespace + "s:", self.namespace + "w:", str(batch), want_data]
        total = 0
        with self._unavailable():
            for server in self._servers():
                if dry_run:
                    total += int(self._eval(server, "purge", [self.expiry_key], [*args, "1"]))
                    continue
                while True:  # one batch per script run: Redis is never blocked for long
                    reply = self._eval(server, "purge", [self.expiry_key], [*args, "0"])
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

    # Waiting: BLPOP on the session's wake-up list (see the module docstring).

    def _block_limit(self, server: Redis) -> float:
        # A BLPOP longer than the socket timeout would fail as a timeout, not return.
        socket_timeout = server.connection_pool.connection_kwargs.get("socket_timeout")
        limit = MAX_BLOCK
        if socket_timeout:
            limit = min(limit, max(0.05, float(socket_timeout) - 0.5))
        return limit

    def wait_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        tag = "{" + session_key + "}"
        with self._unavailable():
            server = self._server(f"{self.namespace}s:{tag}")
            seconds = min(timeout, self._block_limit(server))
            if seconds <= 0:
                return
            server.blpop([f"{self.namespace}w:{tag}"], timeout=max(seconds, 0.01))

    async def await_for_release(self, session_key: str, lock_id: int, timeout: float) -> None:
        # A blocking BLPOP in a worker thread of its own: woken at once, never polling, and
        # never holding the request's thread-sensitive executor.
        await sync_to_async(self.wait_for_release, thread_sensitive=False)(
            session_key, lock_id, timeout
        )

    def close(self) -> None:
        # django-redis owns the connection pools; forget the clients so settings changes apply.
        with self._mutex:
            self._connected = False
            self._primary = None
            self._shards = None
