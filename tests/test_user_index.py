"""Sessions by user through the session core and the public API, on InProc and SQL (PostgreSQL).

Requests go through Django's test client, the real middleware and Django's own login(),
logout() and update_session_auth_hash(); the provider is the engine's real one.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from django.contrib.auth import login, logout, update_session_auth_hash
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from django.urls import path

from django_statemodes import sessions
from django_statemodes.backends.inproc import SessionStore as InProcStore
from django_statemodes.core import registry, users
from django_statemodes.core.session import StateModeSessionBase
from django_statemodes.exceptions import SessionLockLost
from django_statemodes.modes import READ_WRITE
from django_statemodes.providers.base import SessionStateProvider
from django_statemodes.providers.inproc import InProcProvider
from django_statemodes.signals import session_end
from django_statemodes.test import clear_sessions
from tests.fixtures_sql import ALIASES, PG, PG_ENABLED

pytestmark = [
    pytest.mark.django_db(databases=["default", *ALIASES]),
    pytest.mark.urls(__name__),
]

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME = "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"


# A provider that counts the index calls it gets (a real InProc provider, not a mock).


class CountingProvider(InProcProvider):
    calls: ClassVar[Counter[str]] = Counter()

    def bind_user(
        self, session_key: str, user_id: str, *, ip: str | None, user_agent: str | None
    ) -> bool:
        self.calls["bind_user"] += 1
        return super().bind_user(session_key, user_id, ip=ip, user_agent=user_agent)

    def touch_user(self, session_key: str, *, ip: str | None, user_agent: str | None) -> None:
        self.calls["touch_user"] += 1
        super().touch_user(session_key, ip=ip, user_agent=user_agent)

    def user_sessions(self, user_id: str) -> list[Any]:
        self.calls["user_sessions"] += 1
        return super().user_sessions(user_id)


class SessionStore(InProcStore):
    """InProc over ``CountingProvider`` (SESSION_ENGINE = this module)."""

    @classmethod
    def create_provider(cls) -> SessionStateProvider:
        return CountingProvider()


# Views.

held = threading.Event()
go_on = threading.Event()


def sign_in(request: HttpRequest) -> HttpResponse:
    user = User.objects.get(username=request.GET.get("name", "ada"))
    login(request, user)
    return HttpResponse("in")


def sign_out(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponse("out")


def whoami(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"user": request.user.get_username() or None})


def change_password(request: HttpRequest) -> HttpResponse:
    # What PasswordChangeView does: save the new password, then keep this session signed in.
    user = request.user
    assert isinstance(user, User)
    user.set_password("new password")
    user.save()
    update_session_auth_hash(request, user)
    return HttpResponse("changed")


def hold(request: HttpRequest) -> HttpResponse:
    # A ReadWrite request that changed its session and is still running (its lock held).
    request.session["written"] = True
    held.set()
    assert go_on.wait(30)
    return HttpResponse("held")


urlpatterns = [
    path("in/", sign_in),
    path("out/", sign_out),
    path("whoami/", whoami),
    path("password/", change_password),
    path("hold/", hold),
    path("sessions/", __import__("django_statemodes.views").views.sessions_page),
]


ENGINES = ["inproc", "counting", *(["sql-pg"] if PG_ENABLED else [])]


@pytest.fixture(params=ENGINES)
def engine(
    request: Any, settings: Any, sql_tables: list[str]
) -> Iterator[type[StateModeSessionBase]]:
    # sql_tables is session-scoped, so set up before the test's transaction opens: tables
    # created inside it would be invisible to the provider's own connections.
    settings.STATEMODES_USER_INDEX = True
    settings.STATEMODES_USER_INDEX_INTERVAL = 3600
    if request.param == "sql-pg":
        settings.SESSION_ENGINE = "django_statemodes.backends.sql"
        settings.STATEMODES_SQL_DATABASE = PG
    elif request.param == "counting":
        settings.SESSION_ENGINE = __name__
    else:
        settings.SESSION_ENGINE = "django_statemodes.backends.inproc"
    engine = sessions._engine()
    clear_sessions()  # InProc's store lives as long as the process; user ids repeat
    CountingProvider.calls.clear()
    yield engine
    clear_sessions()
    registry.close_all()


@pytest.fixture
def ada(db: Any) -> User:
    return User.objects.create_user("ada", password="secret")


def browser(agent: str = FIREFOX, ip: str = "203.0.113.77") -> Client:
    return Client(HTTP_USER_AGENT=agent, REMOTE_ADDR=ip)


def signed_in(name: str = "ada", agent: str = FIREFOX, ip: str = "203.0.113.77") -> Client:
    client = browser(agent, ip)
    assert client.get(f"/in/?name={name}").status_code == 200
    return client


def key_of(client: Client) -> str:
    return client.cookies["sessionid"].value


def who(client: Client) -> str | None:
    user: str | None = client.get("/whoami/").json()["user"]
    return user


def test_signing_in_binds_the_session_with_its_browser_and_network(engine: Any, ada: User) -> None:
    client = signed_in()
    (info,) = sessions.user_sessions(ada)
    assert info.session_key == key_of(client)
    assert info.user_id == str(ada.pk)
    assert info.user_agent == FIREFOX
    assert info.ip == "203.0.113.0"  # truncated to its /24 by default
    assert [i.session_key for i in sessions.user_sessions(str(ada.pk))] == [info.session_key]


def test_the_ip_and_user_agent_settings_decide_what_is_stored(
    engine: Any, ada: User, settings: Any
) -> None:
    settings.STATEMODES_USER_INDEX_IP = "full"
    settings.STATEMODES_USER_INDEX_USER_AGENT = False
    signed_in(ip="2001:db8:1234:5678::9")
    (info,) = sessions.user_sessions(ada)
    assert (info.ip, info.user_agent) == ("2001:db8:1234:5678::9", None)
    settings.STATEMODES_USER_INDEX_IP = "off"
    signed_in()
    assert {info.ip for info in sessions.user_sessions(ada)} == {"2001:db8:1234:5678::9", None}
    assert users.truncate_ip("2001:db8:1234:5678::9", "truncated") == "2001:db8:1234::"
    assert users.truncate_ip("not an address", "full") is None


def test_two_devices_and_signing_out_removes_only_that_entry(engine: Any, ada: User) -> None:
    first, second = signed_in(), signed_in(agent=CHROME)
    listed = {info.session_key: info.user_agent for info in sessions.user_sessions(ada)}
    assert listed == {key_of(first): FIREFOX, key_of(second): CHROME}
    first.get("/out/")
    assert [info.session_key for info in sessions.user_sessions(ada)] == [key_of(second)]


def test_signing_in_as_another_user_moves_the_session(engine: Any, ada: User) -> None:
    grace = User.objects.create_user("grace", password="secret")
    client = signed_in()
    signed_in_again = client.get("/in/?name=grace")
    assert signed_in_again.status_code == 200
    assert sessions.user_sessions(ada) == []
    assert [info.session_key for info in sessions.user_sessions(grace)] == [key_of(client)]


def test_ending_a_session_sends_session_end_and_its_next_request_is_anonymous(
    engine: Any, ada: User
) -> None:
    client, other = signed_in(), signed_in(agent=CHROME)
    ended: list[tuple[str, str, Any]] = []

    def on_end(sender: Any, session_key: str, data: Any, reason: str, **kwargs: Any) -> None:
        ended.append((session_key, reason, data))

    session_end.connect(on_end)
    try:
        assert sessions.end_session(key_of(other)) is True
        assert sessions.end_session(key_of(other)) is False
    finally:
        session_end.disconnect(on_end)
    assert [(key, reason) for key, reason, _ in ended] == [(key_of(other), "abandoned")]
    assert ended[0][2]["_auth_user_id"] == str(ada.pk)
    assert who(other) is None
    assert who(client) == "ada"


def test_end_user_sessions_keeps_the_one_asked_for(engine: Any, ada: User) -> None:
    clients = [signed_in(), signed_in(agent=CHROME), signed_in()]
    keep = key_of(clients[1])
    assert sessions.end_user_sessions(ada, keep=keep) == 2
    assert [who(client) for client in clients] == [None, "ada", None]
    assert [info.session_key for info in sessions.user_sessions(ada)] == [keep]


def test_the_async_api_shares_the_same_steps(engine: Any, ada: User) -> None:
    from asgiref.sync import async_to_sync

    first, second = signed_in(), signed_in(agent=CHROME)
    infos = async_to_sync(sessions.auser_sessions)(ada)
    assert {info.session_key for info in infos} == {key_of(first), key_of(second)}
    assert async_to_sync(sessions.aend_session)(key_of(first)) is True
    assert async_to_sync(sessions.aend_user_sessions)(ada) == 1
    assert async_to_sync(sessions.auser_sessions)(ada) == []
    assert who(first) is None and who(second) is None


def test_a_session_ended_while_its_request_holds_the_lock_stays_ended(
    engine: Any, ada: User
) -> None:
    client = signed_in()
    key = key_of(client)
    held.clear()
    go_on.clear()
    answers: list[int] = []

    def request() -> None:
        answers.append(client.get("/hold/").status_code)

    thread = threading.Thread(target=request)
    thread.start()
    try:
        assert held.wait(30)
        # The request holds the lock and has changed the session: end it now.
        item = engine.get_provider().get(key)
        assert item is not None and item.locked
        assert sessions.end_session(key) is True
    finally:
        go_on.set()
        thread.join(30)
    # Its save names a lock that no longer exists: refused, and the session is not recreated
    # (Django's answer to a session deleted during the request: 400, SessionInterrupted).
    assert answers == [400]
    assert engine.get_provider().get(key) is None
    assert sessions.user_sessions(ada) == []
    assert who(client) is None


def test_the_core_never_writes_an_ended_locked_session_back(engine: Any, ada: User) -> None:
    # The same, one level down: the core's final save after the removal.
    store = engine(None, access=READ_WRITE)
    store["x"] = 1
    store.save()
    key = store.session_key
    locked = engine(key, access=READ_WRITE)
    assert locked["x"] == 1  # loaded with the lock
    locked["x"] = 2
    assert sessions.end_session(key) is True
    with pytest.raises(SessionLockLost):
        locked.finish(save=True)
    assert engine.get_provider().get(key) is None
    assert not engine(None).exists(key)


def test_a_password_change_ends_every_other_session_when_asked(
    engine: Any, ada: User, settings: Any
) -> None:
    settings.STATEMODES_SIGN_OUT_EVERYWHERE_ON_PASSWORD_CHANGE = True
    here, phone, laptop = signed_in(), signed_in(agent=CHROME), signed_in()
    assert here.get("/password/").status_code == 200
    # update_session_auth_hash cycled this device's key; it stays bound, with its browser.
    (info,) = sessions.user_sessions(ada)
    assert info.session_key == key_of(here) and info.user_agent == FIREFOX
    assert [who(here), who(phone), who(laptop)] == ["ada", None, None]


def test_without_the_setting_a_password_change_ends_nothing_at_once(engine: Any, ada: User) -> None:
    here, phone = signed_in(), signed_in(agent=CHROME)
    here.get("/password/")
    keys = {info.session_key for info in sessions.user_sessions(ada)}
    assert keys == {key_of(here), key_of(phone)}  # Django refuses the phone on its next use


def test_a_password_changed_outside_a_request_ends_every_session(
    engine: Any, ada: User, settings: Any
) -> None:
    settings.STATEMODES_SIGN_OUT_EVERYWHERE_ON_PASSWORD_CHANGE = True
    clients = [signed_in(), signed_in(agent=CHROME)]
    users.current_session.set(None)  # this thread served the requests above
    ada.set_password("reset by an administrator")
    ada.save()
    assert sessions.user_sessions(ada) == []
    assert [who(client) for client in clients] == [None, None]


def test_last_seen_is_written_at_most_once_per_interval(
    engine: Any, ada: User, settings: Any
) -> None:
    if not isinstance(engine.get_provider(), CountingProvider):
        pytest.skip("counted on the counting InProc engine")
    client = signed_in()
    assert CountingProvider.calls["bind_user"] >= 1
    for _ in range(5):
        assert who(client) == "ada"
    assert CountingProvider.calls["touch_user"] == 0  # bound just now: not due
    settings.STATEMODES_USER_INDEX_INTERVAL = 0
    before = sessions.user_sessions(ada)[0].last_seen
    for _ in range(3):
        who(client)
    assert CountingProvider.calls["touch_user"] == 3
    assert sessions.user_sessions(ada)[0].last_seen >= before
    # A request that never reads the session touches nothing.
    client.get("/nowhere/")
    assert CountingProvider.calls["touch_user"] == 3


def test_with_the_index_off_no_index_call_is_made(settings: Any, ada: User) -> None:
    settings.SESSION_ENGINE = __name__
    settings.STATEMODES_USER_INDEX_INTERVAL = 0
    CountingProvider.calls.clear()
    try:
        client = signed_in()
        for _ in range(3):
            assert who(client) == "ada"
        client.get("/password/")
        client.get("/out/")
        assert sum(CountingProvider.calls.values()) == 0
        with pytest.raises(Exception, match="STATEMODES_USER_INDEX"):
            sessions.user_sessions(ada)
    finally:
        registry.close_all()


def test_the_sessions_page_lists_devices_and_ends_them(engine: Any, ada: User) -> None:
    here, phone, tablet = signed_in(), signed_in(agent=CHROME), signed_in()
    here.get("/whoami/")  # a CSRF-free client: the page's forms are checked in the browser
    page = here.get("/sessions/").content.decode()
    assert "Firefox 128 on Linux" in page and "Chrome 126 on Windows" in page
    for client in (phone, tablet):
        assert key_of(client) not in page  # other sessions' keys are never shown
    assert page.count('name="end"') == 2
    reference = page.split('name="end" value="', 2)[1].split('"', 1)[0]
    assert here.post("/sessions/", {"end": reference}).status_code == 302
    assert sorted([who(phone) or "", who(tablet) or ""]) == ["", "ada"]
    assert here.post("/sessions/", {"end": "no such device"}).status_code == 302
    assert here.post("/sessions/", {}).status_code == 400
    assert here.post("/sessions/", {"end_all": "1"}).status_code == 302
    assert [who(here), who(phone), who(tablet)] == ["ada", None, None]
    assert "not signed in anywhere else" in here.get("/sessions/").content.decode()


def test_the_sessions_page_needs_a_signed_in_user(engine: Any) -> None:
    response = browser().get("/sessions/")
    assert response.status_code == 302 and "login" in response["Location"]


def test_the_async_request_end_binds_and_touches_as_the_sync_one(
    engine: Any, ada: User, settings: Any
) -> None:
    from asgiref.sync import async_to_sync

    async def scenario() -> str:
        store = engine(None, access=READ_WRITE)
        await store.aset("_auth_user_id", str(ada.pk))
        store.bind_to_user(str(ada.pk), ip="198.51.100.0", user_agent="Safari")
        await store.afinish(save=True)  # creates the session, then binds it
        key: str | None = store.session_key
        assert key is not None
        again = engine(key, access=READ_WRITE)
        assert await again.aget("_auth_user_id") == str(ada.pk)
        await again.afinish(save=False)  # releases; the touch is not due yet
        return key

    key = async_to_sync(scenario)()
    (info,) = sessions.user_sessions(ada)
    assert (info.session_key, info.ip, info.user_agent) == (key, "198.51.100.0", "Safari")
    settings.STATEMODES_USER_INDEX_INTERVAL = 0
    before = CountingProvider.calls["touch_user"]

    async def touched() -> None:
        store = engine(key, access=READ_WRITE)
        await store.aget("x")
        await store.afinish(save=False)

    async_to_sync(touched)()
    if isinstance(engine.get_provider(), CountingProvider):
        assert CountingProvider.calls["touch_user"] == before + 1
    assert sessions.user_sessions(ada)[0].last_seen >= info.last_seen
