"""Copy live sessions from Django's own engines into ours (``manage.py importsessions``).

Switching ``SESSION_ENGINE`` otherwise logs everyone out: the new engine finds no session for
the cookies browsers send. Each live session of the old engine is copied with its key, its data
and the time it has left, so the same cookie finds it in the new store, and its user stays
logged in. A key already in the new store is left alone (that session is newer).

Sources, by Django engine path:

- ``db`` and ``cached_db``: the ``django_session`` table (the database is the truth for
  ``cached_db``), through Django's ``Session`` model, so ``django.contrib.sessions`` must still
  be in ``INSTALLED_APPS`` while importing;
- ``file``: the files in ``SESSION_FILE_PATH``;
- ``cache``: the ``SESSION_CACHE_ALIAS`` cache, where its keys can be listed: django-redis
  (``iter_keys``) and Django's own Redis cache (``SCAN``). LocMemCache lives in each web process
  and memcached cannot list its keys: neither can be imported from.

``signed_cookies`` sessions live in the browser, under Django's cookie format: there is nothing
to import, and those users log in again.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import import_module
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.cache import caches
from django.utils import timezone

from django_statemodes.core.codec import UNENCODABLE
from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.exceptions import SessionImportError
from django_statemodes.middleware import valid_session_key

__all__ = ["ImportResult", "LiveSession", "import_sessions", "live_sessions"]

DJANGO = "django.contrib.sessions.backends."
# The prefix of Django's cache engine's keys (django.contrib.sessions.backends.cache.KEY_PREFIX).
CACHE_KEY_PREFIX = "django.contrib.sessions.cache"
# Rows read per query from django_session: memory stays flat on a large table.
CHUNK = 1000


@dataclass(frozen=True, slots=True)
class LiveSession:
    """One session of the old store: its key, its data and the seconds it has left."""

    key: str
    data: dict[str, Any]
    timeout: int


@dataclass(slots=True)
class ImportResult:
    """What an import found and did."""

    #: Live sessions read from the old store.
    found: int = 0
    #: Copied into the new store (or, on a dry run, that would be).
    imported: int = 0
    #: Left alone: the key is already in the new store.
    present: int = 0
    #: Not copied: empty, unreadable, or refused by the new store's serializer or size limit.
    skipped: int = 0


def live_sessions(source: str, *, database: str = "default") -> Iterator[LiveSession]:
    """Yield the live sessions of the Django engine at ``source`` (a dotted path)."""
    readers: dict[str, Callable[[], Iterator[LiveSession]]] = {
        DJANGO + "db": lambda: _from_db(source, database),
        DJANGO + "cached_db": lambda: _from_db(source, database),
        DJANGO + "file": lambda: _from_files(source),
        DJANGO + "cache": lambda: _from_cache(source),
    }
    reader = readers.get(source)
    if reader is None:
        if source == DJANGO + "signed_cookies":
            raise SessionImportError(
                "signed_cookies sessions live in the browser: there is nothing to import."
            )
        if source.startswith("django_statemodes."):
            # The state server's protocol lists no keys, and InProc lives in its web processes.
            raise SessionImportError(
                f"Cannot copy all sessions out of {source!r} at once. Set "
                f"STATEMODES_IMPORT_FROM = {source!r} instead: each session then moves on its "
                "first request."
            )
        raise SessionImportError(
            f"Cannot import from {source!r}: choose one of {', '.join(sorted(readers))}."
        )
    return reader()


def _decoder(source: str) -> Any:
    # The engine's own decode(): its signing salt is the engine's class name.
    return import_module(source).SessionStore()


def _from_db(source: str, database: str) -> Iterator[LiveSession]:
    if not apps.is_installed("django.contrib.sessions"):
        raise SessionImportError(
            "Importing from Django's db engine reads the django_session table through its "
            "model: keep 'django.contrib.sessions' in INSTALLED_APPS until the import is done."
        )
    from django.contrib.sessions.models import Session

    decoder = _decoder(source)
    now = timezone.now()
    rows = Session.objects.using(database).filter(expire_date__gt=now).order_by("session_key")
    for row in rows.iterator(chunk_size=CHUNK):
        timeout = int((row.expire_date - now).total_seconds())
        yield LiveSession(row.session_key, decoder.decode(row.session_data), timeout)


def _from_files(source: str) -> Iterator[LiveSession]:
    decoder = _decoder(source)
    folder = settings.SESSION_FILE_PATH or tempfile.gettempdir()
    prefix = settings.SESSION_COOKIE_NAME  # the file engine names each file prefix + key
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith(prefix) or not entry.is_file():
                continue
            key = entry.name[len(prefix) :]
            if valid_session_key(key) is None:
                continue  # another file that shares the prefix
            try:
                with open(entry.path, encoding="ascii") as file:
                    text = file.read()
                modified = datetime.fromtimestamp(entry.stat().st_mtime, tz=UTC)
            except (OSError, UnicodeDecodeError):
                continue  # removed meanwhile, or not a session file
            data = decoder.decode(text) if text else {}
            # What the file engine's load() does: a custom expiry, else the file's age.
            age = timedelta(seconds=decoder.get_session_cookie_age())
            expiry = data.get("_session_expiry") or modified + age
            timeout = decoder.get_expiry_age(expiry=expiry)
            yield LiveSession(key, data, timeout)


def _from_cache(source: str) -> Iterator[LiveSession]:
    cache: Any = caches[settings.SESSION_CACHE_ALIAS]
    if hasattr(cache, "iter_keys"):  # django-redis
        for name in cache.iter_keys(CACHE_KEY_PREFIX + "*"):
            key = name[len(CACHE_KEY_PREFIX) :]
            data = cache.get(name)
            ttl = cache.ttl(name)  # None: no expiry; 0: gone meanwhile
            if data is not None and ttl != 0:
                yield LiveSession(key, data, settings.SESSION_COOKIE_AGE if ttl is None else ttl)
        return
    from django.core.cache.backends.redis import RedisCache

    if not isinstance(cache, RedisCache):
        raise SessionImportError(
            f"The session cache ({settings.SESSION_CACHE_ALIAS!r}, "
            f"{type(cache).__module__}.{type(cache).__name__}) cannot list its keys: only "
            "django-redis and Django's RedisCache can. Sessions in it stay readable by the old "
            "engine only; their users log in again after the switch."
        )
    # Django's RedisCache has no key listing: SCAN its client for the engine's keys. make_key
    # gives the full name (KEY_PREFIX, version), which stays a prefix when the key grows.
    client = cache._cache.get_client(write=False)
    head = cache.make_key(CACHE_KEY_PREFIX)
    for raw in client.scan_iter(match=head.replace("*", r"\*") + "*", count=CHUNK):
        name = raw.decode()
        key = CACHE_KEY_PREFIX + name[len(head) :]
        data = cache.get(key)
        ttl = client.ttl(raw)  # -1: no expiry; -2: gone meanwhile
        if data is not None and ttl != -2:
            yield LiveSession(key[len(CACHE_KEY_PREFIX) :], data, ttl if ttl > 0 else 0)


def import_sessions(
    sessions: Iterator[LiveSession],
    store: type[StateModeSessionBase],
    *,
    dry_run: bool = False,
    on_session: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Copy ``sessions`` into the store of the engine class ``store``; return the counts.

    Each is written as a new item (ASP.NET's insert of a new session), with the seconds it had
    left: no ``session_start`` is sent, since the user's session did not start now.
    """
    provider = store.get_provider()
    if provider.stores_objects:
        raise SessionImportError(
            "The configured engine keeps its sessions in each web process (InProc): a command "
            "cannot reach them. Set STATEMODES_IMPORT_FROM to the old engine instead: each "
            "session then moves on its first request."
        )
    codec = store().codec
    result = ImportResult()
    for session in sessions:
        result.found += 1
        if not session.data or session.timeout <= 0 or valid_session_key(session.key) is None:
            result.skipped += 1
        else:
            _import_one(provider, codec, session, result, dry_run)
        if on_session is not None:
            on_session(result)
    return result


def _import_one(
    provider: Any, codec: Any, session: LiveSession, result: ImportResult, dry_run: bool
) -> None:
    try:
        payload = codec.encode(session.data)
    except UNENCODABLE:
        result.skipped += 1  # a value the new serializer cannot hold, or over the size limit
        return
    if dry_run:
        present = provider.get(session.key) is not None
    else:
        present = not provider.set_and_release(
            session.key, payload, lock_id=None, timeout=session.timeout, new_item=True
        )
    if present:
        result.present += 1
    else:
        result.imported += 1
