"""MemoryStore, without Django: expiry order, bounds, unlock notifications, snapshots."""

from __future__ import annotations

import pytest

from django_statemodes.exceptions import StoreFull
from django_statemodes.memory import Budget, MemoryStore
from django_statemodes.providers.base import ExpiredItem


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def insert(store: MemoryStore, key: str, data: object = b"x", timeout: int = 60) -> None:
    assert store.set_and_release(key, data, lock_id=None, timeout=timeout, new_item=True)


def test_purge_finds_expired_items_in_expiry_order_without_scanning_live_ones() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    insert(store, "a", timeout=10)
    insert(store, "b", timeout=30)
    clock.now += 5
    insert(store, "c", timeout=10)
    clock.now += 6  # a expired (t=10), c not yet (t=15)
    seen: list[ExpiredItem] = []
    assert store.purge_expired(on_expired=seen.append) == 1
    assert [item.session_key for item in seen] == ["a"]
    assert len(store) == 2


def test_a_read_slides_the_item_to_the_back_of_its_queue() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    insert(store, "a", timeout=10)
    insert(store, "b", timeout=10)
    clock.now += 8
    assert store.get("a") is not None  # a now expires at t+18, after b
    clock.now += 3
    seen: list[ExpiredItem] = []
    store.purge_expired(on_expired=seen.append)
    assert [item.session_key for item in seen] == ["b"]
    assert store.get("a") is not None


def test_max_items_evicts_the_unlocked_item_nearest_to_expiry() -> None:
    clock = Clock()
    evicted: list[ExpiredItem] = []
    store = MemoryStore(max_items=2, clock=clock, on_evict=evicted.append)
    insert(store, "old", data="old")
    clock.now += 1
    insert(store, "new", data="new")
    assert store.get_exclusive("old") is not None  # touched and locked: not evictable
    insert(store, "third")
    assert [item.session_key for item in evicted] == ["new"]
    assert evicted[0].data == "new"
    assert store.evictions == 1


def test_updating_an_item_of_a_full_store_evicts_nothing() -> None:
    evicted: list[ExpiredItem] = []
    store = MemoryStore(max_items=2, on_evict=evicted.append)
    insert(store, "a")
    insert(store, "b")
    assert store.set_and_release("a", b"new", lock_id=None, timeout=60)
    assert evicted == []
    assert len(store) == 2


def test_a_store_full_of_locked_items_refuses_with_a_clear_error() -> None:
    store = MemoryStore(max_items=1)
    insert(store, "a")
    assert store.get_exclusive("a") is not None
    with pytest.raises(StoreFull, match="locked"):
        insert(store, "b")


def test_max_bytes_refuses_rather_than_dropping_a_session() -> None:
    store = MemoryStore(max_bytes=100)
    insert(store, "a", data=b"x" * 60)
    with pytest.raises(StoreFull, match="100 bytes"):
        insert(store, "b", data=b"x" * 60)
    assert store.bytes == 60
    assert store.get("a") is not None


def test_every_end_of_a_lock_is_reported_once() -> None:
    unlocked: list[str] = []
    store = MemoryStore(on_unlock=unlocked.append)
    insert(store, "a")
    item = store.get_exclusive("a")
    assert item is not None
    store.set_and_release("a", b"y", lock_id=item.lock_id, timeout=60, release=False)
    assert unlocked == []
    store.set_and_release("a", b"z", lock_id=item.lock_id, timeout=60)
    assert unlocked == ["a"]
    again = store.get_exclusive("a")
    assert again is not None
    store.remove("a", again.lock_id)
    assert unlocked == ["a", "a"]


def test_snapshot_and_restore_keep_data_and_remaining_lifetime() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    insert(store, "a", data=b"A", timeout=100)
    clock.now += 40
    insert(store, "b", data=b"B", timeout=100)
    saved = store.snapshot()
    fresh = MemoryStore(clock=clock)
    assert fresh.restore(saved) == 2
    clock.now += 61  # a had 60 s left, b 100 s
    assert fresh.get("a") is None
    item = fresh.get("b")
    assert item is not None and item.data == b"B" and not item.locked


# Eviction ranks (docs/inproc.md, "Eviction"): FRESH, then RETURNING, then VALUED.


def test_a_flood_of_fresh_items_evicts_only_fresh_items_oldest_first() -> None:
    clock = Clock()
    evicted: list[ExpiredItem] = []
    store = MemoryStore(max_items=3, clock=clock, on_evict=evicted.append)
    insert(store, "user")
    clock.now += 1
    assert store.get("user") is not None  # the client came back: RETURNING
    for n in range(30):  # 10x the bound of one-off sessions, each written once
        clock.now += 1
        insert(store, f"bot{n}")
    assert store.get("user") is not None
    assert [e.session_key for e in evicted] == [f"bot{n}" for n in range(28)]


def test_a_valued_item_outlives_returning_ones_and_returning_ones_outlive_fresh_ones() -> None:
    clock = Clock()
    evicted: list[ExpiredItem] = []
    store = MemoryStore(max_items=3, clock=clock, on_evict=evicted.append)
    # The oldest, nearest to expiry, and written once: a login's new key.
    assert store.set_and_release("user", b"u", None, 60, True, True, True)
    insert(store, "cart")
    clock.now += 1
    assert store.get("cart") is not None  # RETURNING
    insert(store, "bot")
    insert(store, "bot2")
    assert [e.session_key for e in evicted] == ["bot"]
    insert(store, "bot3")  # FRESH goes first, however recent
    assert [e.session_key for e in evicted] == ["bot", "bot2"]
    clock.now += 1
    assert store.get("bot3") is not None  # now RETURNING too, and more recent than cart
    insert(store, "bot4")  # no FRESH item left but the new one's room: RETURNING, oldest
    assert [e.session_key for e in evicted] == ["bot", "bot2", "cart"]
    assert store.get("user") is not None


def test_a_save_ranks_the_item_by_its_valued_flag_both_ways() -> None:
    clock = Clock()
    evicted: list[ExpiredItem] = []
    store = MemoryStore(max_items=2, clock=clock, on_evict=evicted.append)
    insert(store, "a")
    insert(store, "b")
    # A login in a's request: valued from now on; b, FRESH, goes first.
    assert store.set_and_release("a", b"in", None, 60, False, True, True)
    insert(store, "c")
    assert [e.session_key for e in evicted] == ["b"]
    # A logout without a new key: a is no longer VALUED, merely RETURNING; c, FRESH, goes.
    assert store.set_and_release("a", b"out", None, 60, False, True, False)
    insert(store, "d")
    assert [e.session_key for e in evicted] == ["b", "c"]
    insert(store, "e")  # d is FRESH: it goes before a
    assert [e.session_key for e in evicted] == ["b", "c", "d"]


def test_a_placeholders_first_read_is_no_return() -> None:
    clock = Clock()
    evicted: list[ExpiredItem] = []
    store = MemoryStore(max_items=2, clock=clock, on_evict=evicted.append)
    insert(store, "user")
    clock.now += 1
    assert store.get("user") is not None
    clock.now += 1
    assert store.create_uninitialized("placeholder", 60)
    item = store.get("placeholder")  # the client following the redirect that issued it
    assert item is not None and item.initialize
    insert(store, "next")
    assert [e.session_key for e in evicted] == ["placeholder"]


def test_locked_items_at_the_front_are_skipped_not_a_full_store() -> None:
    clock = Clock()
    store = MemoryStore(max_items=2, clock=clock)
    insert(store, "held")
    clock.now += 1
    insert(store, "free")
    assert store.get_exclusive("held") is not None  # locked, and at its queue's front
    insert(store, "new")
    assert store.get("held") is not None and store.get("free") is None


def test_restored_items_rank_as_returning() -> None:
    clock = Clock()
    evicted: list[ExpiredItem] = []
    store = MemoryStore(max_items=2, clock=clock, on_evict=evicted.append)
    store.restore([("old", b"x", 60, 10.0)])  # nearest to expiry, but it outlived a restart
    insert(store, "fresh")
    insert(store, "fresh2")
    assert [e.session_key for e in evicted] == ["fresh"]


# The state server's budget (issue 13): keys, placeholders and a per-item overhead count, shared
# by the stores of every application; InProc (no budget, no overhead) counts payloads as before.


def test_without_a_budget_only_payload_bytes_are_counted_as_inproc_always_did() -> None:
    store = MemoryStore(max_bytes=10)
    insert(store, "a-rather-long-key", b"12345")
    assert store.create_uninitialized("placeholder", 60)
    assert store.bytes == 5
    with pytest.raises(StoreFull):
        insert(store, "b", b"123456")


def test_an_item_is_charged_its_payload_its_key_and_the_overhead() -> None:
    budget = Budget(None)
    store = MemoryStore(budget=budget, item_overhead=100)
    insert(store, "key", b"12345")
    assert store.bytes == budget.used == 5 + 3 + 100
    assert store.create_uninitialized("place", 60)  # a placeholder costs its key and overhead
    assert budget.used == 108 + 5 + 100
    # A save of another size charges the difference; the same size charges nothing new.
    assert store.set_and_release("key", b"1", lock_id=None, timeout=60)
    assert budget.used == 104 + 105
    assert store.remove("key") and store.remove("place")
    assert store.bytes == budget.used == 0


def test_a_full_budget_refuses_new_items_placeholders_and_growth_but_keeps_what_it_holds() -> None:
    budget = Budget(300)
    store = MemoryStore(budget=budget, item_overhead=100)
    insert(store, "a", b"x" * 50)  # 151
    assert store.create_uninitialized("b", 60)  # 101: 252 in use
    with pytest.raises(StoreFull, match="limit of 300 bytes"):
        store.create_uninitialized("c", 60)
    with pytest.raises(StoreFull):
        insert(store, "c", b"")
    with pytest.raises(StoreFull):
        store.set_and_release("a", b"x" * 100, lock_id=None, timeout=60)  # +50 > 300
    assert store.set_and_release("a", b"x" * 10, lock_id=None, timeout=60)  # shrinking is fine
    assert store.get("a").data == b"x" * 10  # type: ignore[union-attr]
    assert budget.used == 111 + 101 and len(store) == 2


def test_stores_sharing_a_budget_share_its_limit_and_expiry_gives_bytes_back() -> None:
    clock = Clock()
    budget = Budget(250)
    first = MemoryStore(budget=budget, item_overhead=100, clock=clock)
    second = MemoryStore(budget=budget, item_overhead=100, clock=clock)
    insert(first, "a", b"", timeout=10)
    insert(second, "b", b"", timeout=60)
    with pytest.raises(StoreFull):
        insert(second, "c", b"")
    clock.now += 11
    assert first.purge_expired() == 1
    assert budget.used == 101 and first.bytes == 0
    insert(second, "c", b"")
    assert budget.used == 202


def test_restored_items_are_charged_like_written_ones() -> None:
    budget = Budget(None)
    store = MemoryStore(budget=budget, item_overhead=100)
    assert store.restore([("key", b"12345", 60, 30.0)]) == 1
    assert store.bytes == budget.used == 108
