"""RedisProvider on a real 6-node Redis Cluster (3 primaries + 3 replicas) started for the tests:
the conformance kit, the engine contract, buckets and purge, wake-ups, errors and checks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from django_statemodes.backends.custom import SessionStore
from django_statemodes.exceptions import SessionStoreUnavailable
from django_statemodes.providers import redis_cluster
from django_statemodes.providers.base import ExpiredItem
from django_statemodes.providers.redis import RedisProvider
from django_statemodes.testing import EngineContract, ProviderContract, new_key
from tests.conftest import REQUIRE_SERVICES
from tests.django_suite import make_django_suite
from tests.redis_cluster import RedisCluster, available, running_cluster

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ALIAS = "statemodes-cluster"
PROVIDER = "django_statemodes.providers.redis.RedisProvider"


@pytest.fixture(scope="session")
def cluster() -> Iterator[RedisCluster]:
    missing = available()
    if missing is not None:
        if REQUIRE_SERVICES:
            pytest.fail(missing + " (STATEMODES_REQUIRE_SERVICES=1)")
        pytest.skip(missing)
    with running_cluster() as started:
        yield started


@pytest.fixture
def cluster_settings(cluster: RedisCluster, settings: Any) -> RedisCluster:
    settings.CACHES = {**settings.CACHES, ALIAS: cluster.cache()}
    settings.STATEMODES_REDIS_ALIAS = ALIAS
    return cluster


class TestClusterProvider(ProviderContract):
    @pytest.fixture
    def provider(self, cluster_settings: RedisCluster) -> Iterator[RedisProvider]:
        provider = RedisProvider(cache_alias=ALIAS)
        yield provider
        provider.close()


class TestClusterEngine(EngineContract):
    @pytest.fixture
    def engine(self, cluster_settings: RedisCluster, settings: Any) -> type[SessionStore]:
        settings.SESSION_ENGINE = "django_statemodes.backends.custom"
        settings.STATEMODES_CUSTOM_PROVIDER = PROVIDER
        return SessionStore


@pytest.fixture(scope="class")
def cluster_alias(cluster: RedisCluster) -> Iterator[None]:
    """Class-wide settings for Django's own (unittest) session tests on the cluster."""
    from django.conf import settings
    from django.test import override_settings

    override = override_settings(
        CACHES={**settings.CACHES, ALIAS: cluster.cache()},
        STATEMODES_CUSTOM_PROVIDER=PROVIDER,
        STATEMODES_REDIS_ALIAS=ALIAS,
    )
    override.enable()
    try:
        yield
    finally:
        override.disable()


def on_the_cluster(self: Any) -> None:
    provider = SessionStore.get_provider()
    assert isinstance(provider, RedisProvider) and provider.cluster is True


# Django's own session tests through Custom mode + RedisProvider on the cluster.
DjangoClusterSessionTests, DjangoClusterMiddlewareTests = (
    pytest.mark.usefixtures("cluster_alias")(
        type(
            f"DjangoCluster{cls.__name__[len('DjangoCustom') :]}",
            (cls,),
            {"test_sessions_are_on_the_cluster": on_the_cluster},
        )
    )
    for cls in make_django_suite("django_statemodes.backends.custom", SessionStore)
)


@pytest.fixture
def provider(cluster_settings: RedisCluster) -> Iterator[RedisProvider]:
    provider = RedisProvider(cache_alias=ALIAS, end_grace=30)
    yield provider
    provider.close()


def node(cluster: RedisCluster, key: str) -> redis.Redis:
    return redis.Redis(port=cluster.primary_of_slot(key_slot(key.encode())))


def test_a_session_and_its_expiry_set_share_a_slot_and_sessions_spread_over_primaries(
    provider: RedisProvider, cluster_settings: RedisCluster
) -> None:
    keys = [new_key() for _ in range(60)]
    primaries = set()
    for key in keys:
        assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
        tag = redis_cluster.bucket(key)
        item = f"statemodes:default:s:{{{tag}}}{key}"
        expiry = f"statemodes:default:expiry:{{{tag}}}"
        assert key_slot(item.encode()) == key_slot(expiry.encode())
        primary = node(cluster_settings, item)
        assert primary.exists(item) == 1 and primary.zscore(expiry, key) is not None
        primaries.add(primary.connection_pool.connection_kwargs["port"])
    assert len(primaries) == 3  # 60 sessions in 256 buckets reach every primary
    for key in keys:
        assert provider.remove(key)


def test_purge_visits_the_buckets_and_reports_expired_sessions_with_their_data(
    provider: RedisProvider,
) -> None:
    keys = [new_key() for _ in range(7)]
    for key in keys:
        assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=1, new_item=True)
    time.sleep(1.2)
    seen: list[ExpiredItem] = []
    assert provider.purge_expired(on_expired=seen.append, batch_size=2) >= 7
    assert {(key, b"\x00{}") for key in keys} <= {(i.session_key, i.data) for i in seen}
    assert provider.purge_expired(dry_run=True) == 0
    assert all(provider.get(key) is None for key in keys)


def test_a_users_sessions_on_every_primary_are_listed_from_the_users_own_set(
    provider: RedisProvider, cluster_settings: RedisCluster
) -> None:
    # The index of sessions by user: the set is one key in its own slot; its members' hashes
    # are on any primary, read in one pipeline (redis-py splits it per node).
    user = new_key()
    keys = [new_key() for _ in range(30)]
    primaries = set()
    for key in keys:
        assert provider.set_and_release(key, b"x", lock_id=None, timeout=60, new_item=True)
        assert provider.bind_user(key, user, ip="192.0.2.0", user_agent="UA")
        primaries.add(node(cluster_settings, provider._keys(key)[0]).connection_pool)
    assert len({pool.connection_kwargs["port"] for pool in primaries}) == 3
    user_set = provider._user_set(user)
    assert node(cluster_settings, user_set).scard(user_set) == len(keys)
    assert {i.session_key for i in provider.user_sessions(user)} == set(keys)
    # Removal in a cluster: the script cannot reach the set's slot; the client removes the
    # member right after it.
    assert provider.remove(keys[0])
    assert node(cluster_settings, user_set).sismember(user_set, keys[0]) == 0
    page, total = provider.list_sessions(user_id=user, offset=0, limit=10)
    assert total == len(keys) - 1 and len(page) == 10
    for key in keys[1:]:
        assert provider.remove(key)
    assert node(cluster_settings, user_set).exists(user_set) == 0


def test_the_admin_listing_pages_through_the_buckets_without_overlap(
    provider: RedisProvider,
) -> None:
    keys = [new_key() for _ in range(25)]
    for key in keys:
        assert provider.set_and_release(key, b"x", lock_id=None, timeout=60, new_item=True)
    try:
        _, total = provider.list_sessions(limit=0)
        assert total >= len(keys)
        seen: list[str] = []
        for offset in range(0, total, 7):
            page, again = provider.list_sessions(offset=offset, limit=7)
            assert len(page) <= 7 and again == total
            seen += [info.session_key for info in page]
        assert set(keys) <= set(seen) and len(seen) == len(set(seen))
    finally:
        for key in keys:
            provider.remove(key)


def test_a_waiter_on_another_primary_is_woken_by_the_broadcast_release(
    provider: RedisProvider,
) -> None:
    import threading

    key = new_key()
    assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    held = provider.get_exclusive(key)
    assert held is not None and held.locked is False
    woken = threading.Event()

    def wait() -> None:
        provider.wait_for_release(key, held.lock_id, 60.0)
        woken.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    # The waiter has flagged the item (its release will PUBLISH) before it sleeps.
    deadline = time.monotonic() + 10
    while provider.wakeups._events.get(key) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    provider.release(key, held.lock_id)
    waiter.join(timeout=30)
    # Woken by the message, not by its 5 s re-check: well before the 60 s wait.
    assert woken.is_set()
    assert provider.remove(key)


def test_a_retried_exclusive_get_and_save_are_recognised_by_their_tokens(
    provider: RedisProvider,
) -> None:
    """What redis-py does after a failover ate a reply: the same call, sent again."""
    key = new_key()
    assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    token = "00ff" + "0" * 12
    first = provider._item(provider._run("get", key, "1", token))
    again = provider._item(provider._run("get", key, "1", token))
    assert first is not None and again is not None
    assert first.locked is False and again.locked is False  # the holder, not its own waiter
    assert again.lock_id == first.lock_id
    other = provider.get_exclusive(key)
    assert other is not None and other.locked is True
    args = provider._set_args(b"\x00{1}", first.lock_id, 60, False, False)
    assert provider._run("set", key, *args) == 1
    assert provider._run("set", key, *args) == 1  # the same write again: not refused
    stale = provider._set_args(b"\x00{2}", first.lock_id, 60, False, False)
    assert provider._run("set", key, *stale) == 0  # a new write with the ended lock is
    item = provider.get(key)
    assert item is not None and item.data == b"\x00{1}" and item.locked is False
    assert provider.remove(key)


def test_a_lock_whose_release_failed_is_released_when_the_store_answers_again(
    provider: RedisProvider,
) -> None:
    key = new_key()
    assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
    held = provider.get_exclusive(key)
    assert held is not None
    # The releaser, as after a failed save-and-release: it ends the lock by its id.
    provider._releaser.add(key, str(held.lock_id), "")
    deadline = time.monotonic() + 10
    while provider._releaser.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    item = provider.get(key)
    assert item is not None and item.locked is False
    assert provider._releaser.released >= 1
    assert provider.remove(key)


def test_a_cluster_behind_a_plain_alias_is_a_clear_503_and_check_e055(
    cluster: RedisCluster, settings: Any
) -> None:
    plain = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": cluster.urls[0],
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1},
    }
    settings.CACHES = {**settings.CACHES, "plain": plain}
    provider = RedisProvider(cache_alias="plain")
    try:
        # Some keys live on another primary: that node answers MOVED.
        with pytest.raises(SessionStoreUnavailable, match="CLUSTER"):
            for _ in range(50):
                provider.get(new_key())
    finally:
        provider.close()
    settings.SESSION_ENGINE = "django_statemodes.backends.custom"
    settings.STATEMODES_CUSTOM_PROVIDER = PROVIDER
    settings.STATEMODES_REDIS_ALIAS = "plain"
    assert "django_statemodes.E055" in check_ids()


def test_check_e056_reports_cluster_options_on_a_plain_redis(
    redis_server: None, settings: Any
) -> None:
    config = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:6379/0",
        "OPTIONS": {"CLUSTER": True},
    }
    settings.CACHES = {**settings.CACHES, "wrong": config}
    settings.SESSION_ENGINE = "django_statemodes.backends.custom"
    settings.STATEMODES_CUSTOM_PROVIDER = PROVIDER
    settings.STATEMODES_REDIS_ALIAS = "wrong"
    assert "django_statemodes.E056" in check_ids()


def test_check_e054_reports_a_database_or_client_class_cluster_cannot_have(
    cluster: RedisCluster, settings: Any
) -> None:
    config = cluster.cache()
    config["LOCATION"] = [url.replace("/0", "/3") for url in cluster.urls]
    settings.CACHES = {**settings.CACHES, "db3": config}
    settings.SESSION_ENGINE = "django_statemodes.backends.custom"
    settings.STATEMODES_CUSTOM_PROVIDER = PROVIDER
    settings.STATEMODES_REDIS_ALIAS = "db3"
    assert "django_statemodes.E054" in check_ids()


def test_checks_accept_the_cluster_alias(cluster_settings: RedisCluster, settings: Any) -> None:
    settings.SESSION_ENGINE = "django_statemodes.backends.custom"
    settings.STATEMODES_CUSTOM_PROVIDER = PROVIDER
    assert not [i for i in check_ids() if i[len("django_statemodes.") :] in CLUSTER_IDS]


CLUSTER_IDS = {"E054", "E055", "E056"}


def check_ids() -> list[str]:
    from django_statemodes.checks import check_settings

    return [message.id for message in check_settings(None) if message.id]


# Through gunicorn (2 workers x 4 threads): no lost update, and a primary killed under load.

APP = "tests.redisapp.wsgi"


def cluster_env(cluster: RedisCluster, **extra: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "tests.redisapp.settings",
        "STATEMODES_TEST_REDIS_CLUSTER": ",".join(cluster.urls[:3]),
        **extra,
    }


def test_eight_clients_times_fifty_increments_through_gunicorn_lose_nothing(
    cluster: RedisCluster,
) -> None:
    from tests.server import gunicorn, hammer

    with gunicorn(APP, workers=2, threads=4, env=cluster_env(cluster)) as port:
        pids: set[str] = set()
        expected, actual = hammer(port, clients=8, increments=50, served=pids)
    assert expected == 401
    assert actual == 401
    assert len(pids) == 2  # the lock held across both worker processes


# A longer lock timeout in the failover test's server: a session stuck behind a lost release
# would wait this long; the bound asserted below is a hundredth of it.
FAILOVER_LOCK_TIMEOUT = 600.0
TIMELINE: dict[str, float] = {}  # the last failover test's timeline, for the report


def test_killing_a_primary_under_load_loses_no_acknowledged_increment_and_sticks_no_session(
    capsys: Any,
) -> None:
    """kill -9 the primary of some sessions while 2 clients per session increment them.

    Each 200 is an acknowledged increment; a 503 is a failure the client sees (the write may
    or may not have been applied). Afterwards every session's counter lies between its
    acknowledged increments and those plus its failed attempts: nothing acknowledged was lost,
    nothing was applied twice. And every session of the killed primary succeeds again soon after
    its replica is promoted: no lock stayed behind on the promoted replica.
    """
    import json
    import threading

    from tests.server import get, gunicorn, session_cookie

    missing = available()
    if missing is not None:
        pytest.skip(missing)
    with running_cluster() as cluster:
        env = cluster_env(cluster, STATEMODES_TEST_LOCK_TIMEOUT=str(FAILOVER_LOCK_TIMEOUT))
        with gunicorn(APP, workers=2, threads=4, env=env) as port:
            # Sessions until three are on one primary (the victim) and three elsewhere.
            by_primary: dict[int, list[str]] = {}
            for _ in range(60):
                status, headers, _ = get(port, "/increment/")
                assert status == 200
                key = session_cookie(headers)
                item = f"statemodes:default:s:{{{redis_cluster.bucket(key)}}}{key}"
                by_primary.setdefault(cluster.primary_of_slot(key_slot(item.encode())), []).append(
                    key
                )
                if sum(len(keys) >= 3 for keys in by_primary.values()) >= 2:
                    break
            full = [primary for primary, keys in by_primary.items() if len(keys) >= 3]
            victim = full[0]
            doomed = by_primary[victim][:3]
            others = [key for p, keys in by_primary.items() if p != victim for key in keys][:3]
            sessions = doomed + others
            acked = dict.fromkeys(sessions, 1)  # the creating request
            failed = dict.fromkeys(sessions, 0)
            # (session, started, finished, status)
            log: list[tuple[str, float, float, int]] = []
            stop = threading.Event()

            def client(key: str) -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        status, _, body = get(port, "/increment/?work=10", key)
                    except OSError:
                        status, body = 0, b""
                    log.append((key, started, time.monotonic(), status))
                    if status == 200:
                        acked[key] += 1
                    elif b"Too many requests" not in body:  # backpressure: the view never ran
                        failed[key] += 1
                        time.sleep(0.05)

            clients = [threading.Thread(target=client, args=(k,)) for k in sessions * 2]
            for thread in clients:
                thread.start()
            replica = cluster.replica_of(victim)
            time.sleep(1.5)
            killed = time.monotonic()
            cluster.kill(victim)
            promoted = cluster.wait_promoted(replica)
            cluster.wait_ok(cluster.live_ports())
            ok_at = time.monotonic()
            time.sleep(3.0)
            stop.set()
            for thread in clients:
                thread.join(timeout=120)
            finals = {}
            for key in sessions:
                status, _, body = get(port, "/read/", key)
                assert status == 200
                finals[key] = json.loads(body)["counter"]

    for key in sessions:
        assert acked[key] <= finals[key] <= acked[key] + failed[key], (key, acked, finals)
    # Every session of the killed primary got a 503 during the failover, then succeeded again.
    after_kill = [entry for entry in log if entry[1] >= killed]
    first_503 = min(e[2] for e in after_kill if e[3] == 503)
    recovered = {}
    for key in doomed:
        successes = [e[2] for e in after_kill if e[0] == key and e[3] == 200 and e[1] >= promoted]
        assert successes, f"session {key} never succeeded after the promotion"
        recovered[key] = min(successes)
    # Stuck behind a lock left on the promoted replica, a session would wait the lock timeout.
    worst = max(recovered.values()) - promoted
    assert worst < FAILOVER_LOCK_TIMEOUT / 100
    longest = max(e[2] - e[1] for e in after_kill)
    gaps = []
    for key in sessions:
        times = sorted(e[2] for e in log if e[0] == key and e[3] == 200)
        gaps.append(max(b - a for a, b in zip(times, times[1:], strict=False)))
    TIMELINE.update(
        first_503=first_503 - killed,
        promoted=promoted - killed,
        cluster_ok=ok_at - killed,
        first_success_after_promotion=min(recovered.values()) - killed,
        last_session_recovered=max(recovered.values()) - killed,
        longest_request=longest,
        longest_gap_between_successes=max(gaps),
        acked=sum(acked.values()),
        failed=sum(failed.values()),
        applied_but_failed=sum(finals[k] - acked[k] for k in sessions),
    )
    with capsys.disabled():
        print("\nfailover timeline (s after kill -9):", json.dumps(TIMELINE, indent=1))


def test_a_lock_whose_release_failed_in_a_failover_is_freed_once_the_replica_is_promoted(
    settings: Any, capsys: Any
) -> None:
    """The lock reached the replica, its primary died, the release failed: the releaser ends
    it on the promoted replica, long before the lock timeout."""
    missing = available()
    if missing is not None:
        pytest.skip(missing)
    settings.STATEMODES_LOCK_TIMEOUT = FAILOVER_LOCK_TIMEOUT
    with running_cluster() as cluster:
        settings.CACHES = {**settings.CACHES, "failover": cluster.cache()}
        provider = RedisProvider(cache_alias="failover")
        try:
            key = new_key()
            assert provider.set_and_release(key, b"\x00{}", lock_id=None, timeout=60, new_item=True)
            held = provider.get_exclusive(key)
            assert held is not None and held.locked is False
            item = f"statemodes:default:s:{{{redis_cluster.bucket(key)}}}{key}"
            victim = cluster.primary_of_slot(key_slot(item.encode()))
            primary = redis.Redis(port=victim)
            assert primary.wait(1, 5000) == 1  # the lock is on the replica too
            primary.close()
            replica = cluster.replica_of(victim)
            cluster.kill(victim)
            killed = time.monotonic()
            try:
                provider.release(key, held.lock_id)
                failed = False
            except SessionStoreUnavailable:
                failed = True  # the usual case: the replica is not promoted yet
            promoted = cluster.wait_promoted(replica)
            unlocked = None
            while time.monotonic() < promoted + FAILOVER_LOCK_TIMEOUT / 100:
                try:
                    item_now = provider.get(key)
                except SessionStoreUnavailable:
                    item_now = None
                if item_now is not None and not item_now.locked:
                    unlocked = time.monotonic()
                    break
                time.sleep(0.05)
            assert unlocked is not None, "the lock stayed on the promoted replica"
            if failed:
                assert provider._releaser.released >= 1
            TIMELINE.update(
                lock_release_failed=float(failed),
                lock_freed_after_kill=unlocked - killed,
                lock_replica_promoted=promoted - killed,
            )
            with capsys.disabled():
                print("\nlock after failover:", TIMELINE)
        finally:
            provider.close()
