"""The conformance kit: the project's own contract suites, importable by provider authors.

Two pytest classes, used by every engine of this project and by any third-party provider::

    from django_statemodes.testing import EngineContract, ProviderContract

    class TestMyProvider(ProviderContract):
        @pytest.fixture
        def provider(self):
            provider = MyProvider()
            yield provider
            provider.close()

    class TestMyEngine(EngineContract):
        @pytest.fixture
        def engine(self, settings):
            settings.SESSION_ENGINE = "django_statemodes.backends.custom"
            settings.STATEMODES_CUSTOM_PROVIDER = "myapp.providers.MyProvider"
            from django_statemodes.backends.custom import SessionStore
            return SessionStore

``ProviderContract`` checks the provider contract of ``providers/base.py`` directly (ASP.NET's
SessionStateStoreProviderBase semantics: lock cookies, uninitialized items, sliding expiry,
purge). ``EngineContract`` checks what users see through the session core: zero lost updates
under concurrency, ReadOnly never waiting, lock stealing, the queue limit and the signals. Both
need pytest-django (``settings`` fixture). A few tests sleep about a second to see real expiry.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.sessions.backends.base import VALID_KEY_CHARS
from django.utils.crypto import get_random_string

from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.exceptions import (
    SessionLockLost,
    SessionQueueFull,
    SessionStateReadOnly,
    SessionTooLarge,
    SessionValueError,
)
from django_statemodes.providers.base import ExpiredItem, SessionStateProvider
from django_statemodes.signals import session_end, session_start

__all__ = ["EngineContract", "ProviderContract"]

# Timeouts used by the expiry tests, in seconds (whole seconds: the contract's unit).
SHORT = 1


def new_key() -> str:
    return get_random_string(32, VALID_KEY_CHARS)


def _run_threads(count: int, target: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:  # collected and re-raised by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


class ProviderContract:
    """The provider contract, checked directly. Subclasses supply a ``provider`` fixture."""

    @pytest.fixture
    def provider(self) -> Iterator[SessionStateProvider]:
        raise NotImplementedError("subclasses of ProviderContract must provide a provider fixture")

    @pytest.fixture
    def key(self, provider: SessionStateProvider) -> Iterator[str]:
        key = new_key()
        yield key
        provider.remove(key)

    def payload(self, provider: SessionStateProvider, value: int) -> Any:
        """Return a distinct payload of the kind the provider stores."""
        if provider.stores_objects:
            return {"value": value}
        return b"\x00" + bytes(range(256)) + str(value).encode()

    def insert(self, provider: SessionStateProvider, key: str, value: int = 1) -> None:
        data = self.payload(provider, value)
        assert provider.set_and_release(key, data, lock_id=None, timeout=60, new_item=True)

    # Reading and inserting.

    def test_get_of_a_missing_key_returns_none(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        assert provider.get(key) is None
        assert provider.get_exclusive(key) is None

    def test_new_item_is_stored_unlocked_with_its_timeout(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        self.insert(provider, key, 7)
        item = provider.get(key)
        assert item is not None
        assert item.data == self.payload(provider, 7)
        assert item.locked is False
        assert item.initialize is False

    def test_new_item_is_refused_when_the_key_exists(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        self.insert(provider, key, 1)
        data = self.payload(provider, 2)
        assert not provider.set_and_release(key, data, lock_id=None, timeout=60, new_item=True)
        item = provider.get(key)
        assert item is not None and item.data == self.payload(provider, 1)

    def test_update_of_a_missing_key_is_refused(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        data = self.payload(provider, 1)
        assert not provider.set_and_release(key, data, lock_id=None, timeout=60)
        assert not provider.set_and_release(key, data, lock_id=3, timeout=60)
        assert provider.get(key) is None

    # Locking (ASP.NET's LockCookie protocol).

    def test_get_exclusive_locks_and_returns_the_data(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        self.insert(provider, key, 3)
        item = provider.get_exclusive(key)
        assert item is not None and not item.locked
        assert item.data == self.payload(provider, 3)
        second = provider.get_exclusive(key)
        assert second is not None
        assert second.locked is True
        assert second.data is None
        assert second.lock_id == item.lock_id  # the holder's lock id
        assert second.lock_age >= 0

    def test_get_returns_the_data_while_the_item_is_locked(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        self.insert(provider, key, 4)
        assert provider.get_exclusive(key) is not None
        item = provider.get(key)
        assert item is not None
        assert item.locked is True
        assert item.data == self.payload(provider, 4)

    def test_lock_id_grows_with_every_exclusive_get(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        self.insert(provider, key)
        first = provider.get_exclusive(key)
        assert first is not None
        provider.release(key, first.lock_id)
        second = provider.get_exclusive(key)
        assert second is not None and not second.locked
        assert second.lock_id > first.lock_id

    def test_set_and_release_writes_and_unlocks(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        self.insert(provider, key, 1)
        held = provider.get_exclusive(key)
        assert held is not None
        data = self.payload(provider, 2)
        assert provider.set_and_release(key, data, lock_id=held.lock_id, timeout=60)
        item = provider.get_exclusive(key)
        assert item is not None and not item.locked
        assert item.data == data

    def test_set_without_release_keeps_the_lock(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        self.insert(provider, key, 1)
        held = provider.get_exclusive(key)
        assert held is not None
        data = self.payload(provider, 2)
        assert provider.set_and_release(key, data, lock_id=held.lock_id, timeout=60, keep_lock=True)
        other = provider.get_exclusive(key)
        assert other is not None and other.locked
        assert provider.set_and_release(key, data, lock_id=held.lock_id, timeout=60)
        item = provider.get(key)
        assert item is not None and not item.locked and item.data == data

    def test_a_broken_lock_refuses_the_old_holders_write(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        self.insert(provider, key, 1)
        old = provider.get_exclusive(key)
        assert old is not None
        provider.release(key, old.lock_id)  # what a waiter does after the lock timeout
        new = provider.get_exclusive(key)
        assert new is not None and not new.locked
        assert provider.set_and_release(
            key, self.payload(provider, 2), lock_id=new.lock_id, timeout=60, keep_lock=True
        )
        assert not provider.set_and_release(
            key, self.payload(provider, 99), lock_id=old.lock_id, timeout=60
        )
        item = provider.get(key)
        assert item is not None and item.data == self.payload(provider, 2)
        assert item.locked  # the new holder still holds it

    def test_release_with_another_lock_id_does_nothing(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        self.insert(provider, key)
        held = provider.get_exclusive(key)
        assert held is not None
        provider.release(key, held.lock_id + 1000)
        item = provider.get_exclusive(key)
        assert item is not None and item.locked

    def test_unconditional_update_ignores_the_lock(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        self.insert(provider, key, 1)
        held = provider.get_exclusive(key)
        assert held is not None
        data = self.payload(provider, 5)
        assert provider.set_and_release(key, data, lock_id=None, timeout=60)
        item = provider.get(key)
        assert item is not None and item.data == data

    def test_remove_with_another_lock_id_is_refused(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        self.insert(provider, key)
        held = provider.get_exclusive(key)
        assert held is not None
        assert not provider.remove(key, held.lock_id + 1000)
        assert provider.get(key) is not None
        assert provider.remove(key, held.lock_id)
        assert provider.get(key) is None

    def test_remove_without_lock_id_deletes_whatever_the_lock(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        self.insert(provider, key)
        assert provider.get_exclusive(key) is not None
        assert provider.remove(key)
        assert provider.get(key) is None
        assert not provider.remove(key)

    # Uninitialized items (ASP.NET CreateUninitializedItem / InitializeItem).

    def test_uninitialized_item_reports_initialize_once(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        assert provider.create_uninitialized(key, 60)
        first = provider.get_exclusive(key)
        assert first is not None and first.initialize is True
        provider.release(key, first.lock_id)
        second = provider.get(key)
        assert second is not None and second.initialize is False

    def test_create_uninitialized_never_overwrites(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        self.insert(provider, key, 8)
        assert not provider.create_uninitialized(key, 60)
        item = provider.get(key)
        assert item is not None and item.data == self.payload(provider, 8)

    # Expiry.

    def test_an_expired_item_is_never_served_and_purge_reports_it(
        self, provider: SessionStateProvider
    ) -> None:
        keys = [new_key() for _ in range(3)]
        for i, key in enumerate(keys):
            data = self.payload(provider, i)
            assert provider.set_and_release(key, data, lock_id=None, timeout=SHORT, new_item=True)
        keeper = new_key()
        self.insert(provider, keeper)
        time.sleep(SHORT + 1.2)
        # Purge first: a provider that sweeps lazily on reads may otherwise get there first.
        counted = provider.purge_expired(dry_run=True)
        assert counted >= len(keys)
        seen: list[ExpiredItem] = []
        removed = provider.purge_expired(on_expired=seen.append)
        assert removed >= len(keys)
        mine = {item.session_key: item.data for item in seen if item.session_key in keys}
        assert set(mine) == set(keys)
        for i, key in enumerate(keys):
            assert mine[key] in (self.payload(provider, i), None)
            assert provider.get(key) is None
            assert provider.get_exclusive(key) is None
        assert provider.get(keeper) is not None
        provider.remove(keeper)

    def test_an_expired_item_is_never_served_before_any_purge(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        data = self.payload(provider, 1)
        assert provider.set_and_release(key, data, lock_id=None, timeout=SHORT, new_item=True)
        time.sleep(SHORT + 1.2)
        assert provider.get(key) is None
        assert provider.get_exclusive(key) is None
        assert not provider.set_and_release(key, data, lock_id=None, timeout=60)

    def test_reads_slide_the_expiry(self, provider: SessionStateProvider, key: str) -> None:
        data = self.payload(provider, 1)
        assert provider.set_and_release(key, data, lock_id=None, timeout=2, new_item=True)
        for _ in range(3):
            time.sleep(1.0)
            assert provider.get(key) is not None  # 3 s in all: only alive because it slides

    # Waiting.

    def test_a_waiter_gets_the_lock_soon_after_the_release(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        self.insert(provider, key)
        held = provider.get_exclusive(key)
        assert held is not None
        released_at: list[float] = []

        def holder(_: int) -> None:
            time.sleep(0.3)
            released_at.append(time.monotonic())
            provider.release(key, held.lock_id)

        acquired_at: list[float] = []

        def waiter(_: int) -> None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                item = provider.get_exclusive(key)
                if item is not None and not item.locked:
                    acquired_at.append(time.monotonic())
                    return
                assert item is not None
                provider.wait_for_release(key, item.lock_id, 5.0)

        errors = _run_threads(2, lambda i: holder(i) if i == 0 else waiter(i))
        assert not errors, errors
        assert acquired_at and released_at
        assert acquired_at[0] >= released_at[0]
        assert acquired_at[0] - released_at[0] < 1.0  # woken, not timed out after 5 s

    # Async twins.

    def test_async_twins_follow_the_same_contract(
        self, provider: SessionStateProvider, key: str
    ) -> None:
        async def scenario() -> None:
            data = self.payload(provider, 1)
            assert await provider.aget(key) is None
            assert await provider.aset_and_release(
                key, data, lock_id=None, timeout=60, new_item=True
            )
            held = await provider.aget_exclusive(key)
            assert held is not None and not held.locked and held.data == data
            busy = await provider.aget_exclusive(key)
            assert busy is not None and busy.locked
            await provider.await_for_release(key, held.lock_id, 0.05)
            data2 = self.payload(provider, 2)
            assert await provider.aset_and_release(key, data2, lock_id=held.lock_id, timeout=60)
            item = await provider.aget(key)
            assert item is not None and item.data == data2 and not item.locked
            again = await provider.aget_exclusive(key)
            assert again is not None
            await provider.arelease(key, again.lock_id)
            assert await provider.aremove(key)
            assert await provider.aget(key) is None

        asyncio.run(scenario())


class EngineContract:
    """What users see through the session core. Subclasses supply an ``engine`` fixture."""

    #: Threads x increments for the lost-update test (the project's acceptance test is 8 x 50).
    threads = 8
    increments = 50

    @pytest.fixture
    def engine(self) -> type[StateModeSessionBase]:
        raise NotImplementedError("subclasses of EngineContract must provide an engine fixture")

    @pytest.fixture
    def session_key(self, engine: type[StateModeSessionBase]) -> Iterator[str]:
        store = engine()
        store["counter"] = 0
        store.save()
        assert store.session_key is not None
        yield store.session_key
        engine().delete(store.session_key)

    def test_concurrent_increments_lose_no_update(
        self, engine: type[StateModeSessionBase], session_key: str
    ) -> None:
        def work(_: int) -> None:
            for _ in range(self.increments):
                store = engine(session_key, access="ReadWrite")
                store["counter"] = store["counter"] + 1
                store.finish(save=True)

        errors = _run_threads(self.threads, work)
        assert not errors, errors
        assert engine(session_key)["counter"] == self.threads * self.increments

    def test_read_only_never_waits_for_the_lock(
        self, engine: type[StateModeSessionBase], session_key: str
    ) -> None:
        writer = engine(session_key, access="ReadWrite")
        writer["counter"] = 41  # loaded and locked; not saved yet
        started = time.monotonic()
        reader = engine(session_key, access="ReadOnly")
        assert reader["counter"] == 0  # the last committed data, at once
        assert time.monotonic() - started < 2.0
        with pytest.raises(SessionStateReadOnly):
            reader["counter"] = 1
        writer.finish(save=True)
        assert engine(session_key, access="ReadOnly")["counter"] == 41

    def test_a_stale_lock_is_broken_and_its_holders_write_refused(
        self, engine: type[StateModeSessionBase], session_key: str, settings: Any
    ) -> None:
        settings.STATEMODES_LOCK_TIMEOUT = 1.0
        stale = engine(session_key, access="ReadWrite")
        stale["counter"] = 100  # takes the lock, then "hangs"
        fresh = engine(session_key, access="ReadWrite")
        assert fresh["counter"] == 0  # waited ~1 s, broke the lock
        fresh["counter"] = 1
        fresh.finish(save=True)
        with pytest.raises(SessionLockLost):
            stale.finish(save=True)
        assert engine(session_key)["counter"] == 1

    def test_the_queue_limit_refuses_extra_waiters(
        self, engine: type[StateModeSessionBase], session_key: str, settings: Any
    ) -> None:
        settings.STATEMODES_LOCK_QUEUE_LIMIT = 1
        holder = engine(session_key, access="ReadWrite")
        holder["counter"] = 1
        results: list[Any] = []

        def wait(_: int) -> None:
            waiter = engine(session_key, access="ReadWrite")
            results.append(waiter["counter"])
            waiter.finish(save=False)

        thread = threading.Thread(target=wait, args=(0,))
        thread.start()
        deadline = time.monotonic() + 5
        refused = None
        while time.monotonic() < deadline and refused is None:
            time.sleep(0.05)
            try:
                engine(session_key, access="ReadWrite")["counter"]
            except SessionQueueFull as exc:
                refused = exc
        holder.finish(save=True)
        thread.join(timeout=10)
        assert refused is not None
        assert "STATEMODES_LOCK_QUEUE_LIMIT" in str(refused)
        assert results == [1]

    def test_release_lets_the_next_request_in_and_forbids_later_writes(
        self, engine: type[StateModeSessionBase], session_key: str
    ) -> None:
        first = engine(session_key, access="ReadWrite")
        first["counter"] = 5
        first.release()
        second = engine(session_key, access="ReadWrite")
        assert second["counter"] == 5  # no wait: the lock is free, the data saved
        second.finish(save=False)
        with pytest.raises(SessionStateReadOnly):
            first["counter"] = 6

    def test_session_start_and_session_end_are_sent(
        self, engine: type[StateModeSessionBase]
    ) -> None:
        started: list[str] = []
        ended: list[tuple[str, Any, str]] = []

        def on_start(sender: Any, session_key: str, **kwargs: Any) -> None:
            started.append(session_key)

        def on_end(sender: Any, session_key: str, data: Any, reason: str, **kwargs: Any) -> None:
            ended.append((session_key, data, reason))

        session_start.connect(on_start)
        session_end.connect(on_end)
        try:
            store = engine(access="ReadWrite")
            store["name"] = "Ada"
            store.finish(save=True)
            key = store.session_key
            assert key is not None and started == [key]
            again = engine(key, access="ReadWrite")
            assert again["name"] == "Ada"
            again.flush()
            assert ended == [(key, {"name": "Ada"}, "abandoned")]
            assert engine(key).exists(key) is False
        finally:
            session_start.disconnect(on_start)
            session_end.disconnect(on_end)

    def test_unserializable_values_fail_where_they_are_stored(
        self, engine: type[StateModeSessionBase], session_key: str
    ) -> None:
        store = engine(session_key, access="ReadWrite")
        if store.get_provider().stores_objects:
            store["live"] = object()  # InProc keeps live objects: no serialization at all
            store.finish(save=True)
            assert isinstance(engine(session_key)["live"], object)
            return
        with pytest.raises(SessionValueError, match="'live'"):
            store["live"] = object()
        store.finish(save=False)

    def test_oversized_values_are_refused_with_a_clear_error(
        self, engine: type[StateModeSessionBase], session_key: str, settings: Any
    ) -> None:
        store = engine(session_key, access="ReadWrite")
        if store.get_provider().stores_objects:
            store.finish(save=False)
            pytest.skip("InProc stores live objects; their size is not measured")
        settings.STATEMODES_MAX_SESSION_SIZE = 1000
        with pytest.raises(SessionTooLarge, match="'big'"):
            store["big"] = "x" * 2000
        store.finish(save=False)
        assert "big" not in engine(session_key)

    def test_an_unknown_key_is_never_adopted(self, engine: type[StateModeSessionBase]) -> None:
        unknown = new_key()
        store = engine(unknown, access="ReadWrite")
        store["x"] = 1
        store.finish(save=True)
        assert store.session_key != unknown
        assert engine(unknown).exists(unknown) is False
