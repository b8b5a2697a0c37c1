"""The registered checks run for every engine: ``run_checks()``, as ``manage.py check`` does.

tests/test_checks.py and the modes' test modules call the check functions directly; these
tests prove that apps.py registers them, with one known id per engine.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import CheckMessage, Error, run_checks
from django.test import override_settings

from tests.example_provider import DictProvider

ENGINES = "django_statemodes.backends."


def registered_checks(**kwargs: Any) -> list[CheckMessage]:
    """``run_checks`` without database checks: Django 6.1 runs model checks against every
    alias by default, opening connections these tests of settings checks do not need."""
    return run_checks(databases=[], **kwargs)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {"SESSION_ENGINE": ENGINES + "inproc", "STATEMODES_INPROC_MAX_SESSIONS": 0},
            "django_statemodes.E013",
            id="inproc",
        ),
        pytest.param(
            {
                "SESSION_ENGINE": ENGINES + "stateserver",
                "STATEMODES_STATE_CONNECTION": "tcpip=127.0.0.1:notaport",
            },
            "django_statemodes.E006",
            id="stateserver-connection",
        ),
        pytest.param(
            {
                "SESSION_ENGINE": ENGINES + "stateserver",
                "STATEMODES_PARTITION_RESOLVER": "no.such.Resolver",
            },
            "django_statemodes.E020",
            id="stateserver-resolver",
        ),
        pytest.param(
            # (Not E031 on "default": once a test database is set up, "default" is the test
            # runner's in-memory database, which E031 allows during a test run.)
            {"SESSION_ENGINE": ENGINES + "sql", "STATEMODES_SQL_DATABASE": "no-such-alias"},
            "django_statemodes.E008",
            id="sql",
        ),
        pytest.param(
            {"SESSION_ENGINE": ENGINES + "custom", "STATEMODES_CUSTOM_PROVIDER": None},
            "django_statemodes.E007",
            id="custom",
        ),
        pytest.param(
            {
                "SESSION_ENGINE": ENGINES + "custom",
                "STATEMODES_CUSTOM_PROVIDER": "django_statemodes.providers.redis.RedisProvider",
                "STATEMODES_CUSTOM_PROVIDER_OPTIONS": {"cache_alias": "nope"},
            },
            "django_statemodes.E040",
            id="custom-redis",
        ),
        pytest.param(
            {
                "SESSION_ENGINE": ENGINES + "off",
                "STATEMODES_COOKIELESS": "UseUri",
                "CSRF_USE_SESSIONS": True,
            },
            "django_statemodes.E052",
            id="off",
        ),
    ],
)
def test_run_checks_reports_each_engine_once(overrides: dict[str, object], expected: str) -> None:
    with override_settings(**overrides):
        ids = [message.id for message in registered_checks()]
    assert ids.count(expected) == 1


class CheckedProvider(DictProvider):
    """A Custom-mode provider with its own ``check(options)``, as docs/custom.md describes."""

    @classmethod
    def check(cls, options: dict[str, Any]) -> list[CheckMessage]:
        if "colour" in options:
            return [Error("CheckedProvider takes no 'colour' option.", id="example.E001")]
        return []


@pytest.mark.parametrize(("options", "expected"), [({"colour": "red"}, ["example.E001"]), ({}, [])])
def test_a_custom_provider_checks_its_own_options(
    options: dict[str, Any], expected: list[str]
) -> None:
    with override_settings(
        SESSION_ENGINE=ENGINES + "custom",
        STATEMODES_CUSTOM_PROVIDER="tests.test_checks_registry.CheckedProvider",
        STATEMODES_CUSTOM_PROVIDER_OPTIONS=options,
    ):
        ids = [message.id for message in registered_checks()]
    assert [i for i in ids if i and i.startswith("example.")] == expected


def statemodes_ids(messages: list[CheckMessage]) -> list[str]:
    return [m.id for m in messages if m.id and m.id.startswith("django_statemodes.")]


def test_our_checks_run_only_where_the_app_is_installed(settings: Any) -> None:
    # Our engine without our middleware: W001 where the app is installed...
    settings.MIDDLEWARE = []
    settings.SESSION_ENGINE = ENGINES + "inproc"
    assert "django_statemodes.W001" in statemodes_ids(registered_checks())
    # ...and nothing in a site whose INSTALLED_APPS leave it out, though the check registered
    # by ready() stays in Django's registry.
    others = [app for app in settings.INSTALLED_APPS if app != "django_statemodes"]
    with override_settings(INSTALLED_APPS=others):
        assert statemodes_ids(registered_checks()) == []


def test_checking_another_app_runs_none_of_ours(settings: Any) -> None:
    from django.apps import apps

    settings.MIDDLEWARE = []
    settings.SESSION_ENGINE = ENGINES + "inproc"
    auth = [apps.get_app_config("auth")]
    ours = [apps.get_app_config("django_statemodes")]
    assert statemodes_ids(registered_checks(app_configs=auth)) == []
    assert "django_statemodes.W001" in statemodes_ids(registered_checks(app_configs=ours))
