"""One lazy object for every ``STATEMODES_*`` setting.

Reading on access (not at import) keeps ``override_settings`` working. Defaults are inline and
documented in ``docs/settings.md``; validation is in the ``checks`` package.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.conf import settings
from django.core.signals import setting_changed

_MISSING = object()
# Values read so far. Several settings are read on every request, and reading one that is not
# set costs Django's LazySettings an AttributeError each time; cleared on every setting change.
_cache: dict[str, Any] = {}


T = TypeVar("T")


def _setting(name: str, default: T) -> T:
    value = _cache.get(name, _MISSING)
    if value is _MISSING:
        value = _cache[name] = getattr(settings, name, default)
    return value  # type: ignore[no-any-return]


def _clear(**kwargs: Any) -> None:
    _cache.clear()


setting_changed.connect(_clear, dispatch_uid="django_statemodes.conf")


class Settings:
    """Shadow Django's settings with the ``STATEMODES_*`` defaults."""

    @property
    def STATEMODES_STATE_CONNECTION(self) -> str:
        # ASP.NET stateConnectionString; several servers separated by ";" partition sessions.
        return _setting("STATEMODES_STATE_CONNECTION", "tcpip=127.0.0.1:42424")

    @property
    def STATEMODES_STATE_NETWORK_TIMEOUT(self) -> float:
        # ASP.NET stateNetworkTimeout, 10 s.
        return _setting("STATEMODES_STATE_NETWORK_TIMEOUT", 10.0)

    @property
    def STATEMODES_STATE_SECRET(self) -> str | None:
        # Shared secret for a state server bound beyond loopback (--allow-remote).
        return _setting("STATEMODES_STATE_SECRET", None)

    @property
    def STATEMODES_STATE_TLS_CA(self) -> str | None:
        # CA file (PEM) that signed the state servers' certificates; needed by tls= addresses.
        # No default trust store: a private service trusts its own CA, not every public one.
        return _setting("STATEMODES_STATE_TLS_CA", None)

    @property
    def STATEMODES_STATE_TLS_CERT(self) -> str | None:
        # Client certificate (PEM) for a server started with --tls-client-ca; None: none sent.
        return _setting("STATEMODES_STATE_TLS_CERT", None)

    @property
    def STATEMODES_STATE_TLS_KEY(self) -> str | None:
        # The client certificate's key (PEM); None: the key is in STATEMODES_STATE_TLS_CERT.
        return _setting("STATEMODES_STATE_TLS_KEY", None)

    @property
    def STATEMODES_PARTITION_RESOLVER(self) -> str | None:
        # ASP.NET partitionResolverType: dotted path of a custom resolver.
        return _setting("STATEMODES_PARTITION_RESOLVER", None)

    @property
    def STATEMODES_STATE_PREVIOUS_CONNECTION(self) -> str | None:
        # A farm change's second step: the layout left. A session not found on its owner is
        # looked for on its owner there and moved. None: not in that step.
        return _setting("STATEMODES_STATE_PREVIOUS_CONNECTION", None)

    @property
    def STATEMODES_STATE_NEXT_CONNECTION(self) -> str | None:
        # A farm change's first step: the layout to come. A session not found on its owner is
        # looked for on its owner there and used where it is, never moved back. None: not in
        # that step.
        return _setting("STATEMODES_STATE_NEXT_CONNECTION", None)

    @property
    def STATEMODES_STATE_DOWN_INTERVAL(self) -> float:
        # Seconds a state server that timed out is refused at once (503) before one request
        # probes it again: its sessions' requests do not each hold a thread for the timeout.
        return _setting("STATEMODES_STATE_DOWN_INTERVAL", 5.0)

    @property
    def STATEMODES_SQL_DATABASE(self) -> str:
        alias: str | None = _setting("STATEMODES_SQL_DATABASE", None)
        if alias is None:
            # Not set: the database routers choose, as Django's db session engine asks
            # db_for_write for its model ("default" without routers). Cached like a setting.
            from django.db import router

            from django_statemodes.models import SessionState

            alias = _cache["STATEMODES_SQL_DATABASE"] = router.db_for_write(SessionState)
        return alias

    @property
    def STATEMODES_SQL_RETRY_INTERVAL(self) -> float:
        # ASP.NET sqlConnectionRetryInterval: 0 means no retry.
        return _setting("STATEMODES_SQL_RETRY_INTERVAL", 0.0)

    @property
    def STATEMODES_SQL_POOLER(self) -> str | None:
        # "transaction": the alias reaches PostgreSQL through a transaction-mode pooler
        # (PgBouncer): no prepared statements unless its OPTIONS name a prepare_threshold, no
        # LISTEN through it. None: a direct connection (or session pooling).
        return _setting("STATEMODES_SQL_POOLER", None)

    @property
    def STATEMODES_SQL_LISTEN_DATABASE(self) -> str | None:
        # The alias LISTENed on for lock releases; None: the sessions' own alias. Behind a
        # transaction pooler, a direct alias to the same database (LISTEN needs a session).
        return _setting("STATEMODES_SQL_LISTEN_DATABASE", None)

    @property
    def STATEMODES_PURGE_BATCH_SIZE(self) -> int:
        return _setting("STATEMODES_PURGE_BATCH_SIZE", 5000)

    @property
    def STATEMODES_CUSTOM_PROVIDER(self) -> str | None:
        return _setting("STATEMODES_CUSTOM_PROVIDER", None)

    @property
    def STATEMODES_CUSTOM_PROVIDER_OPTIONS(self) -> dict[str, Any]:
        # Keyword arguments for the custom provider (ASP.NET <providers><add .../> attributes).
        return _setting("STATEMODES_CUSTOM_PROVIDER_OPTIONS", {})

    @property
    def STATEMODES_REDIS_ALIAS(self) -> str:
        # The django-redis cache alias the Redis provider uses.
        return _setting("STATEMODES_REDIS_ALIAS", "default")

    @property
    def STATEMODES_IMPORT_FROM(self) -> str | None:
        # The engine a site switched from: a key this store lacks is moved out of it on its
        # first request, so switching SESSION_ENGINE logs nobody out, InProc included.
        return _setting("STATEMODES_IMPORT_FROM", None)

    @property
    def STATEMODES_COOKIELESS(self) -> str:
        return _setting("STATEMODES_COOKIELESS", "UseCookies")

    @property
    def STATEMODES_REGENERATE_EXPIRED_SESSION_ID(self) -> bool:
        return _setting("STATEMODES_REGENERATE_EXPIRED_SESSION_ID", True)

    @property
    def STATEMODES_COOKIELESS_REFERRER_POLICY(self) -> str | None:
        return _setting("STATEMODES_COOKIELESS_REFERRER_POLICY", "same-origin")

    @property
    def STATEMODES_COOKIELESS_NOINDEX(self) -> bool:
        return _setting("STATEMODES_COOKIELESS_NOINDEX", False)

    @property
    def STATEMODES_COOKIELESS_BIND_USER_AGENT(self) -> bool:
        return _setting("STATEMODES_COOKIELESS_BIND_USER_AGENT", False)

    @property
    def STATEMODES_LOCK_TIMEOUT(self) -> float:
        # ASP.NET breaks a lock once it is older than executionTimeout (110 s).
        return _setting("STATEMODES_LOCK_TIMEOUT", 110.0)

    @property
    def STATEMODES_LOCK_QUEUE_LIMIT(self) -> int:
        # ASP.NET aspnet:RequestQueueLimitPerSession, 50 since 4.6.3.
        return _setting("STATEMODES_LOCK_QUEUE_LIMIT", 50)

    @property
    def STATEMODES_LOCK_WAITING_THREADS(self) -> int | None:
        # How many threads of this process the waiters of one session may hold; beyond it a
        # request gets 503 + Retry-After at once. None: derived from the process's capacity
        # (half of the most requests it has served at once, at least 1). Async waiters hold no
        # thread and only count against STATEMODES_LOCK_QUEUE_LIMIT.
        return _setting("STATEMODES_LOCK_WAITING_THREADS", None)

    @property
    def STATEMODES_MAX_CONNECTIONS(self) -> int:
        # Store connections one process keeps open per store: for the blocking path, and as
        # many for each event loop (uvicorn runs one per worker).
        return _setting("STATEMODES_MAX_CONNECTIONS", 10)

    @property
    def STATEMODES_CONNECTION_WAIT(self) -> float:
        # How long a request waits for a free store connection before its 503.
        return _setting("STATEMODES_CONNECTION_WAIT", 5.0)

    @property
    def STATEMODES_CONNECTION_IDLE_TIMEOUT(self) -> float:
        # A pooled connection unused this long is closed (PostgreSQL's idle sessions cost RAM).
        return _setting("STATEMODES_CONNECTION_IDLE_TIMEOUT", 60.0)

    @property
    def STATEMODES_DEFAULT_ACCESS(self) -> str:
        # ASP.NET <pages enableSessionState="true">.
        return _setting("STATEMODES_DEFAULT_ACCESS", "ReadWrite")

    @property
    def STATEMODES_COMPRESSION(self) -> bool:
        # ASP.NET compressionEnabled, off.
        return _setting("STATEMODES_COMPRESSION", False)

    @property
    def STATEMODES_ALLOW_PICKLE_SERIALIZER(self) -> bool:
        # A pickle-based SESSION_SERIALIZER runs code planted in the store: refused (E060)
        # unless the site says only trusted code can write there.
        return _setting("STATEMODES_ALLOW_PICKLE_SERIALIZER", False)

    @property
    def STATEMODES_APPLICATION_NAME(self) -> str:
        # Explicit, never derived from a deployment path (the classic web-farm trap).
        return _setting("STATEMODES_APPLICATION_NAME", "default")

    @property
    def STATEMODES_MAX_SESSION_SIZE(self) -> int:
        return _setting("STATEMODES_MAX_SESSION_SIZE", 4 * 1024 * 1024)

    @property
    def STATEMODES_INPROC_MAX_SESSIONS(self) -> int:
        return _setting("STATEMODES_INPROC_MAX_SESSIONS", 100_000)

    @property
    def STATEMODES_UNAVAILABLE_VIEW(self) -> str | None:
        # Dotted path of a view(request, exception) for the 503 page, like handler500; None:
        # the statemodes/503.html template.
        return _setting("STATEMODES_UNAVAILABLE_VIEW", None)

    @property
    def STATEMODES_USER_INDEX(self) -> bool:
        # Keep the index of sessions by user (sessions by user, "sign out everywhere", the
        # live-sessions admin beyond SQL). Off: nothing is recorded and no request does more.
        return _setting("STATEMODES_USER_INDEX", False)

    @property
    def STATEMODES_USER_INDEX_INTERVAL(self) -> int:
        # A session's "last seen" is written at most this often (seconds), not on every request.
        return _setting("STATEMODES_USER_INDEX_INTERVAL", 300)

    @property
    def STATEMODES_USER_INDEX_IP(self) -> str:
        # "full", "truncated" (IPv4 /24, IPv6 /48: a town, not a home) or "off" (none stored).
        return _setting("STATEMODES_USER_INDEX_IP", "truncated")

    @property
    def STATEMODES_USER_INDEX_USER_AGENT(self) -> bool:
        # Store the browser's User-Agent (cut to 512 characters) beside the session.
        return _setting("STATEMODES_USER_INDEX_USER_AGENT", True)

    @property
    def STATEMODES_SIGN_OUT_EVERYWHERE_ON_PASSWORD_CHANGE(self) -> bool:
        # When a user's password changes, end every other session of theirs at once.
        return _setting("STATEMODES_SIGN_OUT_EVERYWHERE_ON_PASSWORD_CHANGE", False)


conf = Settings()
