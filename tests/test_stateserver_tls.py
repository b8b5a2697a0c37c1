"""TLS for the state server's link, against real server processes (issue 13's "Trust").

A throwaway CA, a server certificate (``localhost``, ``127.0.0.1``) and a client certificate are
made by the ``openssl`` command in a temporary directory. What is shown: a client that trusts
another CA, or speaks plain TCP, is refused; one with the CA works through the Django engine; a
server with ``--tls-client-ca`` refuses a client without a certificate; a relay that records
every byte sees no session data over TLS (and does see it without TLS, which proves the
recording works); plain bytes on a TLS port are dropped; ``--allow-remote`` needs TLS; the
checks E024-E027 catch the settings' mistakes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from django_statemodes.backends.stateserver import SessionStore
from django_statemodes.checks.stateserver import check_stateserver
from django_statemodes.exceptions import StateServerUnavailable
from django_statemodes.providers.stateserver import StateServerProvider
from django_statemodes.stateserver import protocol as p
from django_statemodes.stateserver.addresses import Address, parse_connection
from django_statemodes.stateserver.client import AsyncStateServerClient, StateServerClient
from django_statemodes.stateserver.server import ServerConfig
from django_statemodes.stateserver.tls import client_context
from django_statemodes.testing import EngineContract, ProviderContract
from tests.conftest import REQUIRE_SERVICES, free_port
from tests.farm import Browser
from tests.fixtures_stateserver import ROOT, StateServerProcess
from tests.server import gunicorn, increment_concurrently
from tests.test_stateserver_handshake import RecordingProxy

pytestmark = [pytest.mark.stateserver]

ENGINE = "django_statemodes.backends.stateserver"


# Certificates.


@dataclass(frozen=True)
class Certificates:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str  # a CA that signed nothing here: trusting it alone must fail


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip


def make_leaf(directory: Path, name: str, ca: str, usage: str) -> None:
    """A key and a certificate for ``name`` signed by ``ca``; ``usage`` serverAuth/clientAuth."""
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", extensions.name,
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if shutil.which("openssl") is None:
        message = "the openssl command is needed to make test certificates"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (STATEMODES_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    directory = tmp_path_factory.mktemp("tls")
    make_ca(directory, "ca")
    make_ca(directory, "other-ca")
    make_leaf(directory, "server", "ca", "serverAuth")
    make_leaf(directory, "client", "ca", "clientAuth")
    return Certificates(
        ca=str(directory / "ca.pem"),
        server_cert=str(directory / "server.pem"),
        server_key=str(directory / "server.key"),
        client_cert=str(directory / "client.pem"),
        client_key=str(directory / "client.key"),
        other_ca=str(directory / "other-ca.pem"),
    )


# Servers.


class TLSServerProcess(StateServerProcess):
    """A state server with ``--tls-cert``; started once a TLS client reads its WELCOME."""

    def __init__(self, certs: Certificates, *args: str, client_ca: bool = False) -> None:
        tls = ["--tls-cert", certs.server_cert, "--tls-key", certs.server_key]
        if client_ca:
            tls += ["--tls-client-ca", certs.ca]
        super().__init__(*tls, *args)
        self.context = client_context(
            certs.ca, certs.client_cert if client_ca else None, certs.client_key
        )

    @property
    def connection(self) -> str:
        return f"tls=127.0.0.1:{self.port}"

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.port, tls=True)

    def __enter__(self) -> TLSServerProcess:
        return self.start()

    def start(self) -> TLSServerProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        command = [sys.executable, "-m", "django_statemodes.stateserver", "--port", str(self.port)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                command + self.args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw,
                    self.context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
                ):
                    if sock.recv(1):  # the WELCOME, through TLS
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"TLS state server did not start: {self.log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def tls_server(certs: Certificates) -> Iterator[TLSServerProcess]:
    with TLSServerProcess(certs, "--handshake-timeout", "3") as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(certs: Certificates) -> Iterator[TLSServerProcess]:
    with TLSServerProcess(certs, client_ca=True) as server:
        yield server


def tls_settings(settings: Any, certs: Certificates, connection: str) -> None:
    settings.SESSION_ENGINE = ENGINE
    settings.STATEMODES_STATE_CONNECTION = connection
    settings.STATEMODES_STATE_NETWORK_TIMEOUT = 5
    settings.STATEMODES_STATE_TLS_CA = certs.ca


def ping_blocking(address: Address, context: ssl.SSLContext | None) -> bytes:
    client = StateServerClient(address, timeout=5, ssl_context=context)
    try:
        return client.ping(b"hi")
    finally:
        client.close()


def ping_async(address: Address, context: ssl.SSLContext | None) -> bytes:
    async def ping() -> bytes:
        client = AsyncStateServerClient(address, timeout=5, ssl_context=context)
        try:
            return await client.ping(b"hi")
        finally:
            await client.aclose()

    return asyncio.run(ping())


CLIENTS = pytest.mark.parametrize("ping", [ping_blocking, ping_async], ids=["blocking", "async"])


# The link.


def test_tls_addresses_parse_beside_plain_ones_in_a_farm() -> None:
    first, second, third = parse_connection("tls=10.0.0.1:42424; tcpip=10.0.0.2; tls=[::1]:9")
    assert first == Address("10.0.0.1", 42424, tls=True)
    assert second == Address("10.0.0.2", 42424, tls=False)
    assert third == Address("::1", 9, tls=True)
    # The printed form (and so a server's place in the farm's hashing) ignores TLS.
    assert str(first) == "10.0.0.1:42424" and str(third) == "[::1]:9"


@CLIENTS
def test_a_client_with_the_ca_is_served(tls_server: TLSServerProcess, ping: Any) -> None:
    assert ping(tls_server.address, tls_server.context) == b"hi"


@CLIENTS
def test_a_client_trusting_another_ca_is_refused_naming_the_setting(
    certs: Certificates, tls_server: TLSServerProcess, ping: Any
) -> None:
    with pytest.raises(StateServerUnavailable, match="TLS handshake failed") as info:
        ping(tls_server.address, client_context(certs.other_ca))
    assert "certificate verify failed" in str(info.value)
    assert info.value.setting == "STATEMODES_STATE_TLS_CA"
    assert ping(tls_server.address, tls_server.context) == b"hi"  # the server still serves


def test_a_client_checks_the_servers_name(tls_server: TLSServerProcess) -> None:
    # The certificate names localhost and 127.0.0.1: a client that asked for another host (and
    # was routed to this server, as a hijacked DNS name would) refuses it.
    def to_the_server(address: tuple[str, int], timeout: float) -> socket.socket:
        return socket.create_connection(("127.0.0.1", tls_server.port), timeout)

    client = StateServerClient(
        Address("state.example", tls_server.port, tls=True),
        timeout=5,
        ssl_context=tls_server.context,
        socket_factory=to_the_server,
    )
    with pytest.raises(StateServerUnavailable, match="TLS handshake failed") as info:
        client.ping(b"hi")
    assert "state.example" in str(info.value)
    client.close()


@CLIENTS
def test_a_plain_client_gets_no_answer_from_a_tls_port(
    tls_server: TLSServerProcess, ping: Any
) -> None:
    plain = Address("127.0.0.1", tls_server.port)
    with pytest.raises(StateServerUnavailable):
        ping(plain, None)
    assert ping(tls_server.address, tls_server.context) == b"hi"


@CLIENTS
def test_a_tls_client_refuses_a_plain_server_naming_tls(
    certs: Certificates, stateserver: StateServerProcess, ping: Any
) -> None:
    plain_server = Address("127.0.0.1", stateserver.port, tls=True)
    with pytest.raises(StateServerUnavailable, match="TLS handshake failed") as info:
        ping(plain_server, client_context(certs.ca))
    assert "needs a tcpip= address" in str(info.value)


def test_a_tls_address_needs_a_context() -> None:
    with pytest.raises(ValueError, match="ssl_context"):
        StateServerClient(Address("127.0.0.1", 1, tls=True))


def test_a_session_is_saved_and_loaded_over_tls_through_the_engine(
    certs: Certificates, tls_server: TLSServerProcess, settings: Any
) -> None:
    tls_settings(settings, certs, tls_server.connection)
    assert check_stateserver() == []
    store = SessionStore()
    store["cart"] = ["tea", 3]
    store.save()
    assert store.session_key is not None
    assert SessionStore(store.session_key)["cart"] == ["tea", 3]

    async def load_async() -> Any:
        return await SessionStore(store.session_key).aget("cart")

    assert asyncio.run(load_async()) == ["tea", 3]
    SessionStore(store.session_key).delete()


# Mutual TLS.


@CLIENTS
def test_mutual_tls_refuses_a_client_without_a_certificate(
    certs: Certificates, mtls_server: TLSServerProcess, ping: Any
) -> None:
    with pytest.raises(StateServerUnavailable, match="--tls-client-ca") as info:
        ping(mtls_server.address, client_context(certs.ca))
    assert info.value.setting == "STATEMODES_STATE_TLS_CERT"
    assert ping(mtls_server.address, mtls_server.context) == b"hi"


def test_mutual_tls_through_the_engine_with_the_client_certificate(
    certs: Certificates, mtls_server: TLSServerProcess, settings: Any
) -> None:
    tls_settings(settings, certs, mtls_server.connection)
    settings.STATEMODES_STATE_TLS_CERT = certs.client_cert
    settings.STATEMODES_STATE_TLS_KEY = certs.client_key
    assert check_stateserver() == []
    store = SessionStore()
    store["user"] = 42
    store.save()
    assert store.session_key is not None
    assert SessionStore(store.session_key)["user"] == 42


def test_runstateserver_stats_reaches_a_tls_server_as_the_site_does(
    certs: Certificates,
    mtls_server: TLSServerProcess,
    settings: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tls_settings(settings, certs, mtls_server.connection)
    settings.STATEMODES_STATE_TLS_CERT = certs.client_cert
    settings.STATEMODES_STATE_TLS_KEY = certs.client_key
    call_command("runstateserver", stats=True)
    out = capsys.readouterr().out
    assert f"State server at {mtls_server.address}" in out and "sessions:" in out
    settings.STATEMODES_STATE_TLS_CERT = settings.STATEMODES_STATE_TLS_KEY = None
    with pytest.raises(CommandError, match="STATEMODES_STATE_TLS_CERT"):
        call_command("runstateserver", stats=True)  # mutual TLS: the server wants a certificate


# What crosses the wire.


def planted_session(connection: str, marker: str) -> tuple[str, Any]:
    """Save a session holding ``marker`` through a provider at ``connection``; read it back."""
    provider = StateServerProvider(connection=connection, timeout=5)
    try:
        payload = f'{{"secret": "{marker}"}}'.encode()
        assert provider.set_and_release("k" * 32, payload, lock_id=None, timeout=60, new_item=True)
        item = provider.get("k" * 32)
        assert item is not None
        return marker, item.data
    finally:
        provider.close()


def test_a_relay_sees_no_session_data_over_tls(
    certs: Certificates, tls_server: TLSServerProcess, settings: Any
) -> None:
    settings.STATEMODES_STATE_TLS_CA = certs.ca
    marker = "MARKER-" + os.urandom(8).hex()
    with RecordingProxy(tls_server.port) as relay:
        _, data = planted_session(f"tls=127.0.0.1:{relay.port}", marker)
    assert marker.encode() in data  # it was stored and read back through the relay
    captured = bytes(relay.client_sent) + bytes(relay.server_sent)
    assert len(relay.client_sent) > 100 and len(relay.server_sent) > 100
    assert marker.encode() not in captured
    assert captured[:1] == b"\x16"  # a TLS handshake record, not a protocol frame


def test_a_relay_does_see_session_data_without_tls(stateserver: StateServerProcess) -> None:
    # The control: the same recording on a plain link shows the marker, both ways.
    marker = "MARKER-" + os.urandom(8).hex()
    with RecordingProxy(stateserver.port) as relay:
        planted_session(f"tcpip=127.0.0.1:{relay.port}", marker)
    assert marker.encode() in bytes(relay.client_sent)
    assert marker.encode() in bytes(relay.server_sent)


# Hostile bytes and slow handshakes on a TLS port.


def closed_by_server(sock: socket.socket) -> bool:
    """Read until the server closes (True) or 30 s pass (False)."""
    sock.settimeout(30)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_plain_protocol_bytes_on_a_tls_port_are_dropped_cleanly(
    tls_server: TLSServerProcess,
) -> None:
    hello = p.Connection(p.CLIENT)
    hello.receive_data(p.Connection(p.SERVER).send(p.Welcome()))
    hello.next_event()
    frames = [hello.send(p.Hello(client_nonce=b"c" * 16)), b"\x00" * 64, os.urandom(512)]
    log_before = tls_server.log.stat().st_size
    for _ in range(20):
        for frame in frames:
            with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as sock:
                sock.sendall(frame)
                assert closed_by_server(sock)
    assert tls_server.proc is not None and tls_server.proc.poll() is None
    assert ping_blocking(tls_server.address, tls_server.context) == b"hi"
    log = tls_server.log.read_bytes()[log_before:]
    assert b"Traceback" not in log
    assert len(log) < 4096  # 60 hostile connections: a few lines at most, never one each


def test_a_connection_silent_before_the_tls_handshake_is_dropped(
    tls_server: TLSServerProcess,
) -> None:
    # --handshake-timeout (3 s here) covers the TLS handshake too: the server closes one that
    # never sends its ClientHello (closed_by_server waits 10 times as long before giving up).
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as sock:
        assert closed_by_server(sock)
    assert ping_blocking(tls_server.address, tls_server.context) == b"hi"


# The daemon's options.


def run_main(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "django_statemodes.stateserver", *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)


def test_allow_remote_on_a_network_address_needs_tls(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 40)
    result = run_main(
        "--host", "0.0.0.0", "--port", str(free_port()), "--allow-remote",
        "--secret-file", str(secret_file),
    )  # fmt: skip
    assert result.returncode == 2
    assert "without TLS" in result.stderr
    assert "--tls-cert" in result.stderr and "--insecure-allow-plaintext" in result.stderr


def test_the_insecure_flag_or_tls_lifts_the_refusal(certs: Certificates) -> None:
    # Validated without binding: tests listen on 127.0.0.1 only.
    base: dict[str, Any] = {"host": "0.0.0.0", "allow_remote": True, "secret": b"s" * 40}
    with pytest.raises(ValueError, match="without TLS"):
        ServerConfig(**base).validate()
    ServerConfig(**base, insecure_allow_plaintext=True).validate()
    ServerConfig(**base, tls_cert=certs.server_cert, tls_key=certs.server_key).validate()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tls-cert", "/nonexistent/server.pem"), "cannot load the TLS files"),
        (("--tls-key", "/nonexistent/server.key"), "need --tls-cert"),
    ],
)
def test_bad_tls_options_stop_the_start_with_exit_2(args: tuple[str, ...], message: str) -> None:
    result = run_main("--port", str(free_port()), *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_key_that_does_not_match_the_certificate_stops_the_start(certs: Certificates) -> None:
    result = run_main(
        "--port", str(free_port()), "--tls-cert", certs.server_cert, "--tls-key", certs.client_key
    )
    assert result.returncode == 2
    assert "--tls-cert" in result.stderr


# Checks.


def check_ids(**overrides: Any) -> list[str]:
    with override_settings(SESSION_ENGINE=ENGINE, **overrides):
        return [message.id or "" for message in check_stateserver()]


def test_e024_a_tls_file_that_cannot_be_read(certs: Certificates) -> None:
    assert check_ids(
        STATEMODES_STATE_CONNECTION="tls=127.0.0.1:1", STATEMODES_STATE_TLS_CA="/nonexistent/ca"
    ) == ["django_statemodes.E024"]
    assert "django_statemodes.E024" in check_ids(
        STATEMODES_STATE_CONNECTION="tls=127.0.0.1:1", STATEMODES_STATE_TLS_CA=42
    )


def test_e025_a_tls_address_without_a_ca() -> None:
    assert check_ids(STATEMODES_STATE_CONNECTION="tcpip=127.0.0.1:1;tls=127.0.0.1:2") == [
        "django_statemodes.E025"
    ]


def test_e026_tls_settings_without_a_tls_address_or_a_key_without_a_certificate(
    certs: Certificates,
) -> None:
    assert check_ids(
        STATEMODES_STATE_CONNECTION="tcpip=127.0.0.1:1", STATEMODES_STATE_TLS_CA=certs.ca
    ) == ["django_statemodes.E026"]
    assert check_ids(
        STATEMODES_STATE_CONNECTION="tls=127.0.0.1:1",
        STATEMODES_STATE_TLS_CA=certs.ca,
        STATEMODES_STATE_TLS_KEY=certs.client_key,
    ) == ["django_statemodes.E026"]


def test_e027_tls_files_that_do_not_load(certs: Certificates) -> None:
    tls = {"STATEMODES_STATE_CONNECTION": "tls=127.0.0.1:1", "STATEMODES_STATE_TLS_CA": certs.ca}
    # A key that is not the certificate's, and a CA file that holds a key, not a certificate.
    assert check_ids(
        **tls,
        STATEMODES_STATE_TLS_CERT=certs.client_cert,
        STATEMODES_STATE_TLS_KEY=certs.server_key,
    ) == ["django_statemodes.E027"]
    assert check_ids(**dict(tls, STATEMODES_STATE_TLS_CA=certs.server_key)) == [
        "django_statemodes.E027"
    ]
    assert check_ids(**tls) == []  # the control


# The conformance kit over TLS: the provider contract and the engine contract, unchanged.


class TestProviderOverTLS(ProviderContract):
    @pytest.fixture
    def provider(
        self, certs: Certificates, tls_server: TLSServerProcess, settings: Any
    ) -> Iterator[StateServerProvider]:
        settings.STATEMODES_STATE_TLS_CA = certs.ca
        provider = StateServerProvider(connection=tls_server.connection, timeout=5)
        yield provider
        provider.close()


class TestEngineOverTLS(EngineContract):
    @pytest.fixture
    def engine(
        self, certs: Certificates, tls_server: TLSServerProcess, settings: Any
    ) -> type[SessionStore]:
        tls_settings(settings, certs, tls_server.connection)
        return SessionStore


# Through a real web server.


@pytest.mark.slow
def test_gunicorn_workers_lose_no_update_over_mutual_tls(
    certs: Certificates, mtls_server: TLSServerProcess
) -> None:
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.tls_site_settings",
        "FARM_STATE_CONNECTION": mtls_server.connection,
        "FARM_NETWORK_TIMEOUT": "10",
        "TLS_SITE_CA": certs.ca,
        "TLS_SITE_CERT": certs.client_cert,
        "TLS_SITE_KEY": certs.client_key,
    }
    with gunicorn("tests.farmapp.wsgi:application", workers=2, threads=4, env=env) as port:
        browser = Browser(port)
        assert browser.counter("/incr") == 1
        assert browser.cookie is not None
        increment_concurrently(port, "/incr", browser.cookie, clients=4, increments=25)
        assert browser.counter("/count") == 101
