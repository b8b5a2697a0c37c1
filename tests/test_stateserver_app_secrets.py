"""Per-application secrets (``--app-secrets``) against a real server process.

Two sites, ``shop`` and ``blog``, share one state server, each with its own secret; a global
secret serves the single-tenant ``legacy`` site, as every client before per-application secrets
did. A client holding one site's secret cannot read, purge or list the other's sessions: the
handshake binds a connection to the one application whose secret it proves.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from django_statemodes.backends.stateserver import SessionStore
from django_statemodes.exceptions import StateServerUnavailable
from django_statemodes.stateserver.addresses import Address
from django_statemodes.stateserver.client import AsyncStateServerClient, StateServerClient
from tests.conftest import free_port
from tests.fixtures_stateserver import ROOT, StateServerProcess

pytestmark = [pytest.mark.stateserver]

SHOP = b"shop-secret-" + b"s" * 32
BLOG = b"blog-secret-" + b"b" * 32
GLOBAL = b"global-secret-" + b"g" * 32
GENERATE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StateServerProcess]:
    directory = tmp_path_factory.mktemp("tenants")
    app_secrets = write_private(
        directory / "app-secrets",
        f"# one line per site\nshop:{SHOP.decode()}\n\nblog:{BLOG.decode()}\n",
    )
    secret = write_private(directory / "secret", GLOBAL.decode())
    args = ("--app-secrets", str(app_secrets), "--secret-file", str(secret))
    with StateServerProcess(*args) as server:
        yield server


def client(server: StateServerProcess, application: str, secret: bytes) -> StateServerClient:
    return StateServerClient(
        Address("127.0.0.1", server.port), timeout=5, application=application, secret=secret
    )


@pytest.fixture
def planted(tenants: StateServerProcess) -> Iterator[str]:
    """A blog session, written with the blog's own secret."""
    blog = client(tenants, "blog", BLOG)
    key = "blogsession" + os.urandom(6).hex()
    assert blog.set_and_release(key, b'{"draft": 1}', lock_id=None, timeout=60, new_item=True)
    yield key
    blog.remove(key)
    blog.close()


def test_each_site_uses_its_own_secret(tenants: StateServerProcess, planted: str) -> None:
    blog = client(tenants, "blog", BLOG)
    item = blog.get(planted)
    assert item is not None and item.data == b'{"draft": 1}'
    blog.close()


@pytest.mark.parametrize("operation", ["get", "purge", "stats"])
def test_the_shop_secret_cannot_reach_the_blogs_sessions(
    tenants: StateServerProcess, planted: str, operation: str
) -> None:
    intruder = client(tenants, "blog", SHOP)  # the shop's secret, naming the blog
    calls = {
        "get": lambda: intruder.get(planted),
        "purge": intruder.purge,
        "stats": intruder.stats,
    }
    with pytest.raises(StateServerUnavailable) as info:
        calls[operation]()
    message = str(info.value)
    assert "wrong secret for application 'blog'" in message
    assert "--app-secrets" in message
    assert info.value.setting == "STATEMODES_STATE_SECRET"
    intruder.close()
    # Nothing was read or lost: the blog still has its session.
    blog = client(tenants, "blog", BLOG)
    assert blog.get(planted) is not None
    blog.close()


def test_the_global_secret_cannot_open_a_site_that_has_its_own(
    tenants: StateServerProcess, planted: str
) -> None:
    operator = client(tenants, "blog", GLOBAL)
    with pytest.raises(StateServerUnavailable, match="wrong secret for application 'blog'"):
        operator.get(planted)
    operator.close()


def test_a_sites_purge_removes_its_own_sessions_only(
    tenants: StateServerProcess, planted: str
) -> None:
    shop = client(tenants, "shop", SHOP)
    assert shop.set_and_release("shopsession", b"{}", lock_id=None, timeout=60, new_item=True)
    assert shop.get(planted) is None  # the blog's key, looked up in the shop's namespace
    assert shop.purge() == 1
    blog = client(tenants, "blog", BLOG)
    assert blog.get(planted) is not None
    shop.close()
    blog.close()


def test_stats_with_a_sites_secret_lists_that_site_only(
    tenants: StateServerProcess, planted: str
) -> None:
    shop = client(tenants, "shop", SHOP)
    legacy = client(tenants, "legacy", GLOBAL)
    try:
        assert shop.set_and_release("shopstats", b"{}", lock_id=None, timeout=60, new_item=True)
        assert legacy.set_and_release("legacy1", b"{}", lock_id=None, timeout=60, new_item=True)
        stats = shop.stats()
        assert list(stats["applications"]) == ["shop"]
        assert stats["sessions"] == 1 and stats["scope"] == "shop"
        assert "blog" not in str(stats) and "legacy" not in str(stats)
        # The global secret (the operator's, single-tenant) still lists every application.
        everything = legacy.stats()
        assert {"shop", "blog", "legacy"} <= set(everything["applications"])
        assert everything["sessions"] >= 3
    finally:
        shop.remove("shopstats")
        legacy.remove("legacy1")
        shop.close()
        legacy.close()


def test_a_client_of_before_per_application_secrets_keeps_working(
    tenants: StateServerProcess,
) -> None:
    # An application not in --app-secrets, with the global secret: the handshake every client
    # has always made, unchanged on the wire.
    async def roundtrip() -> bytes:
        legacy = AsyncStateServerClient(
            Address("127.0.0.1", tenants.port), timeout=5, application="legacy", secret=GLOBAL
        )
        try:
            return await legacy.ping(b"old")
        finally:
            await legacy.aclose()

    assert asyncio.run(roundtrip()) == b"old"


def test_the_django_engine_with_a_sites_secret(tenants: StateServerProcess, settings: Any) -> None:
    settings.SESSION_ENGINE = "django_statemodes.backends.stateserver"
    settings.STATEMODES_STATE_CONNECTION = tenants.connection
    settings.STATEMODES_STATE_NETWORK_TIMEOUT = 5
    settings.STATEMODES_APPLICATION_NAME = "shop"
    settings.STATEMODES_STATE_SECRET = SHOP.decode()
    store = SessionStore()
    store["basket"] = ["tea"]
    store.save()
    assert store.session_key is not None
    assert SessionStore(store.session_key)["basket"] == ["tea"]
    SessionStore(store.session_key).delete()


def test_without_a_global_secret_an_unlisted_application_is_refused(tmp_path: Path) -> None:
    app_secrets = write_private(tmp_path / "app-secrets", f"shop:{SHOP.decode()}\n")
    with StateServerProcess("--app-secrets", str(app_secrets)) as server:
        assert client(server, "shop", SHOP).ping(b"ok") == b"ok"
        with pytest.raises(StateServerUnavailable, match="has no secret on this state server"):
            client(server, "other", SHOP).ping()


# The file.


def run_main(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "django_statemodes.stateserver", *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        (f"shop:{SHOP.decode()}\n", 0o644, "chmod 600"),
        ("shop:short\n", 0o600, GENERATE),
        (f"shop {SHOP.decode()}\n", 0o600, "expected 'application:secret'"),
        (f"shop:{SHOP.decode()}\nshop:{BLOG.decode()}\n", 0o600, "'shop' named twice"),
        ("# nothing\n", 0o600, "names no application"),
    ],
    ids=["world-readable", "short", "no-colon", "twice", "empty"],
)
def test_a_bad_app_secrets_file_stops_the_start(
    tmp_path: Path, text: str, mode: int, message: str
) -> None:
    path = tmp_path / "app-secrets"
    path.write_text(text)
    path.chmod(mode)
    result = run_main("--port", str(free_port()), "--app-secrets", str(path))
    assert result.returncode == 2
    assert message in result.stderr
    assert SHOP.decode() not in result.stderr  # a secret is never echoed
