"""MemoryStore's index of sessions by user, without Django: entries follow their items."""

from __future__ import annotations

import sys

import pytest

from django_statemodes.exceptions import StoreFull
from django_statemodes.memory import (
    BINDING_OVERHEAD,
    MAX_IP_LENGTH,
    MAX_USER_AGENT_LENGTH,
    Budget,
    MemoryStore,
)
from django_statemodes.providers.base import ExpiredItem


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float, *others: Clock) -> None:
        self.now += seconds
        for other in others:
            other.now += seconds


def make(**options: object) -> tuple[MemoryStore, Clock, Clock]:
    clock, wall = Clock(1000.0), Clock(1_700_000_000.0)
    return MemoryStore(clock=clock, wall_clock=wall, **options), clock, wall  # type: ignore[arg-type]


def insert(store: MemoryStore, key: str, data: object = b"x", timeout: int = 60) -> None:
    assert store.set_and_release(key, data, lock_id=None, timeout=timeout, new_item=True)


def test_bind_records_owner_times_and_client_details() -> None:
    store, clock, wall = make()
    insert(store, "k1", data=b"abc")
    assert store.bind_user("k1", "42", ip="10.0.0.0", user_agent="Firefox")
    (info,) = store.user_sessions("42")
    assert info.session_key == "k1"
    assert info.user_id == "42"
    assert info.created == info.last_seen == wall.now
    assert info.expires == wall.now + 60
    assert (info.ip, info.user_agent, info.size, info.locked) == ("10.0.0.0", "Firefox", 3, False)


def test_bind_of_a_missing_or_expired_item_records_nothing() -> None:
    store, clock, _ = make()
    assert not store.bind_user("nope", "1")
    insert(store, "k", timeout=10)
    clock.now += 11
    assert not store.bind_user("k", "1")
    assert store.user_sessions("1") == []
    assert store.user_keys("1") == []


def test_rebinding_moves_the_session_to_the_new_owner() -> None:
    store, _, _ = make()
    insert(store, "k")
    store.bind_user("k", "alice")
    store.bind_user("k", "bob")
    assert store.user_sessions("alice") == []
    assert [i.session_key for i in store.user_sessions("bob")] == ["k"]


def test_touch_updates_last_seen_and_only_the_details_given() -> None:
    store, clock, wall = make()
    insert(store, "k")
    store.bind_user("k", "1", ip="1.2.3.0", user_agent="A")
    created = wall.now
    clock.advance(30, wall)
    assert store.touch_user("k", user_agent="B")
    (info,) = store.user_sessions("1")
    assert (info.created, info.last_seen) == (created, created + 30)
    assert (info.ip, info.user_agent) == ("1.2.3.0", "B")
    assert not store.touch_user("unbound")


def test_touch_does_not_slide_expiry() -> None:
    store, clock, wall = make()
    insert(store, "k", timeout=10)
    store.bind_user("k", "1")
    clock.advance(6, wall)
    store.touch_user("k")
    clock.advance(5, wall)
    assert store.user_sessions("1") == []  # expired at 10 s despite the touch at 6 s


def test_a_save_keeps_the_binding_and_unbind_drops_it_only() -> None:
    store, _, _ = make()
    insert(store, "k")
    store.bind_user("k", "1")
    assert store.set_and_release("k", b"new", lock_id=None, timeout=60)
    assert [i.size for i in store.user_sessions("1")] == [3]
    assert store.unbind_user("k")
    assert not store.unbind_user("k")
    assert store.user_sessions("1") == []
    assert store.get("k") is not None


@pytest.mark.parametrize("with_lock", [False, True])
def test_remove_drops_the_entry_whatever_the_lock(with_lock: bool) -> None:
    store, _, _ = make()
    insert(store, "k")
    store.bind_user("k", "1")
    item = store.get_exclusive("k")
    assert item is not None
    assert store.remove("k", item.lock_id if with_lock else None)
    assert store.user_sessions("1") == []
    assert store.user_keys("1") == []
    assert store.binding("k") is None


def test_expiry_hides_the_entry_and_the_purge_drops_it() -> None:
    store, clock, _ = make()
    insert(store, "a", timeout=10)
    insert(store, "b", timeout=100)
    store.bind_user("a", "1")
    store.bind_user("b", "1")
    clock.now += 11
    assert [i.session_key for i in store.user_sessions("1")] == ["b"]
    assert store.user_keys("1") == ["a", "b"]  # not yet purged: the purge reports it
    purged: list[ExpiredItem] = []
    assert store.purge_expired(on_expired=purged.append) == 1
    assert [p.session_key for p in purged] == ["a"]
    assert store.user_keys("1") == ["b"]


def test_eviction_drops_the_entry() -> None:
    evicted: list[ExpiredItem] = []
    store, _, _ = make(max_items=1, on_evict=evicted.append)
    insert(store, "a")
    store.bind_user("a", "1")
    insert(store, "b")
    assert [e.session_key for e in evicted] == ["a"]
    assert store.user_keys("1") == []


def test_a_new_item_over_an_expired_one_does_not_inherit_its_owner() -> None:
    store, clock, _ = make()
    insert(store, "k", timeout=10)
    store.bind_user("k", "1")
    clock.now += 11
    insert(store, "k")
    assert store.binding("k") is None
    assert store.user_keys("1") == []


def test_users_are_isolated_and_listing_costs_only_their_sessions() -> None:
    store, _, _ = make()
    for n in range(2000):
        insert(store, f"s{n}")
    for key in ("s5", "s1500", "s1999"):
        store.bind_user(key, "alice")
    store.bind_user("s7", "bob")
    reads = 0
    live = store._live  # count the items the listing looks at

    def counting(key: str, now: float) -> object:
        nonlocal reads
        reads += 1
        return live(key, now)

    store._live = counting  # type: ignore[method-assign,assignment]
    sessions = store.user_sessions("alice")
    assert [i.session_key for i in sessions] == ["s5", "s1500", "s1999"]
    assert reads == 3
    assert [i.session_key for i in store.user_sessions("bob")] == ["s7"]


def test_list_sessions_pages_bound_and_unbound_sessions() -> None:
    store, _, _ = make()
    for n in range(7):
        insert(store, f"s{n}")
    store.bind_user("s2", "1")
    store.bind_user("s4", "1")
    page, total = store.list_sessions(offset=0, limit=3)
    assert total == 7
    assert [i.session_key for i in page] == ["s0", "s1", "s2"]
    assert [i.user_id for i in page] == ["", "", "1"]
    page, total = store.list_sessions(offset=6, limit=3)
    assert [i.session_key for i in page] == ["s6"]
    page, total = store.list_sessions(user_id="1", offset=1, limit=5)
    assert ([i.session_key for i in page], total) == (["s4"], 2)
    assert store.list_sessions(limit=0) == ([], 7)


def test_locked_sessions_show_their_lock_and_age() -> None:
    store, clock, wall = make()
    insert(store, "k")
    store.bind_user("k", "1")
    assert store.get_exclusive("k") is not None
    clock.advance(4, wall)
    (info,) = store.user_sessions("1")
    assert info.locked
    assert info.lock_age == 4
    (listed,), _ = store.list_sessions()
    assert listed.locked


def test_hostile_user_ids_are_refused_and_client_strings_cut() -> None:
    store, _, _ = make()
    insert(store, "k")
    with pytest.raises(ValueError, match="255 bytes"):
        store.bind_user("k", "é" * 200)
    with pytest.raises(ValueError, match="non-empty"):
        store.bind_user("k", "")
    store.bind_user("k", "é" * 127, ip="9" * 1000, user_agent="U" * 100_000)
    binding = store.binding("k")
    assert binding is not None
    assert binding.user_agent is not None and len(binding.user_agent) == MAX_USER_AGENT_LENGTH
    assert binding.ip is not None and len(binding.ip) == MAX_IP_LENGTH


def test_unbound_items_carry_no_index_field() -> None:
    store, _, _ = make()
    insert(store, "k")
    before = sys.getsizeof(store._items["k"])
    assert not hasattr(store._items["k"], "__dict__")
    store.bind_user("k", "1")
    assert sys.getsizeof(store._items["k"]) == before
    assert "user" not in " ".join(type(store._items["k"]).__slots__)


def test_the_state_server_budget_counts_the_index() -> None:
    budget = Budget(limit=None)
    store, _, _ = make(budget=budget, item_overhead=100)
    insert(store, "k")
    used = budget.used
    store.bind_user("k", "alice", ip="1.2.3.0", user_agent="UA")
    assert budget.used == used + BINDING_OVERHEAD + len("alice") + len("1.2.3.0") + 2
    store.touch_user("k", user_agent="A longer agent")
    assert budget.used == used + BINDING_OVERHEAD + len("alice") + len("1.2.3.0") + 14
    store.remove("k")
    assert budget.used == 0
    assert store.bytes == 0


def test_binding_past_the_budget_is_refused_with_store_full() -> None:
    store, _, _ = make(budget=Budget(limit=400), item_overhead=100)
    insert(store, "k")
    with pytest.raises(StoreFull):
        store.bind_user("k", "1", user_agent="U" * 300)
    assert store.binding("k") is None
    assert store.bind_user("k", "1")  # a small one fits


def test_bindings_survive_a_snapshot_and_restore() -> None:
    store, clock, wall = make()
    insert(store, "a")
    insert(store, "b", timeout=5)
    store.bind_user("a", "1", ip="1.1.1.0", user_agent="UA")
    store.bind_user("b", "1")
    clock.advance(6, wall)
    items, bindings = store.snapshot(), store.bindings()
    assert [key for key, _ in bindings] == ["a"]
    copy, _, _ = make()
    copy.restore(items)
    assert copy.restore_bindings(bindings + [("gone", bindings[0][1])]) == 1
    (info,) = copy.user_sessions("1")
    assert (info.session_key, info.ip, info.user_agent) == ("a", "1.1.1.0", "UA")
    assert info.created == wall.now - 6
