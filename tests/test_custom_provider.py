"""Custom mode: loading the provider, its errors, and the example provider of docs/custom.md."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_statemodes.backends.custom import SessionStore
from django_statemodes.testing import EngineContract, FakeClock, ProviderContract
from tests.django_suite import make_django_suite
from tests.example_provider import DictProvider

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "tests.example_provider.DictProvider"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def test_the_docs_show_the_example_provider_exactly_as_tested() -> None:
    code = (ROOT / "tests" / "example_provider.py").read_text()
    blocks = python_blocks((ROOT / "docs" / "custom.md").read_text())
    assert code in blocks


def test_the_docs_conformance_snippet_names_the_kit_classes() -> None:
    blocks = python_blocks((ROOT / "docs" / "custom.md").read_text())
    kit = [b for b in blocks if "django_statemodes.testing" in b]
    assert len(kit) == 1
    assert "class TestDictProvider(ProviderContract)" in kit[0]
    assert "class TestDictEngine(EngineContract)" in kit[0]


class TestExampleProvider(ProviderContract):
    injected_clock = True

    @pytest.fixture
    def provider(self, clock: FakeClock) -> Iterator[DictProvider]:
        provider = DictProvider(clock=clock)
        yield provider
        provider.close()


class TestExampleEngine(EngineContract):
    injected_clock = True

    @pytest.fixture
    def engine(self, settings: Any, clock: FakeClock) -> type[SessionStore]:
        settings.SESSION_ENGINE = "django_statemodes.backends.custom"
        settings.STATEMODES_CUSTOM_PROVIDER = EXAMPLE
        settings.STATEMODES_CUSTOM_PROVIDER_OPTIONS = {"clock": clock}
        return SessionStore


def _with_example(cls: type) -> Any:
    from django.test import override_settings

    return override_settings(STATEMODES_CUSTOM_PROVIDER=EXAMPLE)(cls)


# Django's own session tests through Custom mode and the example provider.
DjangoExampleSessionTests, DjangoExampleMiddlewareTests = (
    _with_example(type(f"DjangoExample{cls.__name__[len('DjangoCustom') :]}", (cls,), {}))
    for cls in make_django_suite("django_statemodes.backends.custom", SessionStore)
)


# Loading the provider.


def test_the_provider_gets_the_options_setting_as_keyword_arguments(settings: Any) -> None:
    settings.STATEMODES_CUSTOM_PROVIDER = EXAMPLE
    settings.STATEMODES_CUSTOM_PROVIDER_OPTIONS = {"region": "eu", "replicas": 2}
    provider = SessionStore.get_provider()
    assert isinstance(provider, DictProvider)
    assert provider.options == {"region": "eu", "replicas": 2}


def test_the_provider_is_built_once_per_process_and_settings(settings: Any) -> None:
    settings.STATEMODES_CUSTOM_PROVIDER = EXAMPLE
    first = SessionStore.get_provider()
    assert SessionStore().get_provider() is first
    settings.STATEMODES_CUSTOM_PROVIDER_OPTIONS = {"changed": True}
    assert SessionStore.get_provider() is not first


def test_a_missing_provider_setting_is_a_clear_error(settings: Any) -> None:
    settings.STATEMODES_CUSTOM_PROVIDER = None
    with pytest.raises(ImproperlyConfigured, match="STATEMODES_CUSTOM_PROVIDER is not set"):
        SessionStore()


def test_an_unimportable_provider_is_a_clear_error(settings: Any) -> None:
    settings.STATEMODES_CUSTOM_PROVIDER = "tests.no_such_module.Provider"
    with pytest.raises(ImproperlyConfigured, match="'tests.no_such_module.Provider' cannot be"):
        SessionStore()


def test_a_class_that_is_not_a_provider_is_a_clear_error(settings: Any) -> None:
    settings.STATEMODES_CUSTOM_PROVIDER = "collections.OrderedDict"
    with pytest.raises(ImproperlyConfigured, match="not a SessionStateProvider subclass"):
        SessionStore()


def test_options_the_provider_does_not_accept_are_a_clear_error(settings: Any) -> None:
    settings.STATEMODES_CUSTOM_PROVIDER = "django_statemodes.providers.redis.RedisProvider"
    settings.STATEMODES_CUSTOM_PROVIDER_OPTIONS = {"cache_alais": "sessions"}
    with pytest.raises(ImproperlyConfigured, match=r"RedisProvider does not accept .*cache_alais"):
        SessionStore()


def test_options_that_are_not_a_dict_are_a_clear_error(settings: Any) -> None:
    settings.STATEMODES_CUSTOM_PROVIDER = EXAMPLE
    settings.STATEMODES_CUSTOM_PROVIDER_OPTIONS = ["region", "eu"]
    with pytest.raises(ImproperlyConfigured, match="should be a dict"):
        SessionStore()


def test_the_custom_engine_serves_requests_through_the_middleware(
    client: Any, settings: Any
) -> None:
    settings.SESSION_ENGINE = "django_statemodes.backends.custom"
    settings.STATEMODES_CUSTOM_PROVIDER = EXAMPLE
    assert client.get("/increment/").json() == {"counter": 1}
    assert client.get("/increment/").json() == {"counter": 2}
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    provider = SessionStore.get_provider()
    assert isinstance(provider, DictProvider)
    item = provider.get(key)
    assert item is not None and not item.locked
    assert isinstance(item.data, bytes)  # serialized by the core, not live objects
