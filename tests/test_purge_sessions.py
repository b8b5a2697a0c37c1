from __future__ import annotations

from collections.abc import Iterable
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from django_statemodes.backends.inproc import SessionStore
from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.signals import session_end


def purge(*args: str) -> str:
    out = StringIO()
    call_command("purge_sessions", *args, stdout=out)
    return out.getvalue()


def make_expiring(value: str) -> str:
    store = SessionStore()
    store["name"] = value
    store.set_expiry(1)
    store.save()
    assert store.session_key is not None
    return store.session_key


def expire_at_once(engine: type[StateModeSessionBase], keys: Iterable[str]) -> None:
    """Store the sessions again, unchanged, with a timeout of 0 s: expired without waiting.

    Every payload is read before any is rewritten: a read may run InProc's lazy sweep, which
    would end an already expired session before the purge under test could.
    """
    provider = engine.get_provider()
    items = [(key, provider.get(key)) for key in keys]
    for key, item in items:
        assert item is not None
        assert provider.set_and_release(key, item.data, lock_id=None, timeout=0)


def test_dry_run_counts_then_purge_removes_and_sends_session_end() -> None:
    SessionStore.purge()  # start from a clean store
    keys = {make_expiring("a"), make_expiring("b")}
    live = SessionStore()
    live["name"] = "live"
    live.save()
    expire_at_once(SessionStore, keys)
    assert purge("--dry-run") == "2 expired session(s) would be purged.\n"
    ended: list[tuple[str, Any, str]] = []

    def receiver(sender: Any, session_key: str, data: Any, reason: str, **kw: Any) -> None:
        ended.append((session_key, data, reason))

    session_end.connect(receiver)
    try:
        assert "Purged 2 expired session(s)." in purge()
    finally:
        session_end.disconnect(receiver)
    assert {key for key, _, _ in ended} == keys
    assert all(reason == "expired" and data["name"] in "ab" for _, data, reason in ended)
    assert live.session_key is not None and SessionStore().exists(live.session_key)


def test_verbosity_zero_prints_nothing_but_still_purges() -> None:
    SessionStore.purge()  # start from a clean store
    keys = {make_expiring("a"), make_expiring("b")}
    expire_at_once(SessionStore, keys)
    assert SessionStore.purge(dry_run=True) == 2
    ended: list[str] = []

    def receiver(sender: Any, session_key: str, **kw: Any) -> None:
        ended.append(session_key)

    session_end.connect(receiver)
    try:
        assert purge("--verbosity", "0") == ""
    finally:
        session_end.disconnect(receiver)
    assert set(ended) == keys
    # Removed, not merely hidden (an expired session is never served even before a purge).
    assert SessionStore.purge(dry_run=True) == 0


@override_settings(SESSION_ENGINE="django.contrib.sessions.backends.cache")
def test_django_engines_are_purged_like_clearsessions() -> None:
    assert purge() == "Expired sessions purged.\n"
    with pytest.raises(CommandError, match="cannot count"):
        purge("--dry-run")


def test_a_bad_batch_size_is_refused() -> None:
    with pytest.raises(CommandError, match="--batch-size"):
        purge("--batch-size", "0")


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.django_db(databases=["default", "statesqlite"], transaction=True)
def test_a_terminal_gets_a_progress_bar_batch_by_batch(settings: Any) -> None:
    from django_statemodes.backends.sql import SessionStore as SQLStore

    settings.SESSION_ENGINE = "django_statemodes.backends.sql"
    settings.STATEMODES_SQL_DATABASE = "statesqlite"
    call_command("installsqlstate", database="statesqlite", verbosity=0)  # idempotent
    SQLStore.purge()  # start from no expired session
    keys = []
    for _ in range(5):
        store = SQLStore()
        store["x"] = 1
        store.set_expiry(1)
        store.save()
        assert store.session_key is not None
        keys.append(store.session_key)
    expire_at_once(SQLStore, keys)
    out = Terminal()
    call_command("purge_sessions", "--batch-size", "2", stdout=out)
    text = out.getvalue()
    assert "\r[" in text
    assert "100% 5/5" in text
    assert "2/5" in text and "4/5" in text  # drawn after each batch of 2
    assert text.rstrip().endswith("Purged 5 expired session(s).")


def test_without_a_terminal_there_is_no_bar_only_a_summary() -> None:
    out = purge()
    assert "\r" not in out and "[" not in out
