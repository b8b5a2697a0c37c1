from __future__ import annotations

from django.test import override_settings

from django_statemodes.conf import conf


def test_defaults_follow_aspnet() -> None:
    assert conf.STATEMODES_STATE_CONNECTION == "tcpip=127.0.0.1:42424"
    assert conf.STATEMODES_STATE_NETWORK_TIMEOUT == 10.0
    assert conf.STATEMODES_LOCK_TIMEOUT == 110.0
    assert conf.STATEMODES_LOCK_QUEUE_LIMIT == 50
    assert conf.STATEMODES_DEFAULT_ACCESS == "ReadWrite"
    assert conf.STATEMODES_COOKIELESS == "UseCookies"
    assert conf.STATEMODES_REGENERATE_EXPIRED_SESSION_ID is True
    assert conf.STATEMODES_COMPRESSION is False


def test_settings_are_read_on_access_so_override_settings_works() -> None:
    with override_settings(STATEMODES_LOCK_TIMEOUT=5):
        assert conf.STATEMODES_LOCK_TIMEOUT == 5
    assert conf.STATEMODES_LOCK_TIMEOUT == 110.0
