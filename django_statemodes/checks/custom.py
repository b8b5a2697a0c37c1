"""Checks of Custom mode's settings: E007, and the Redis provider's through ``redis.py``."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import CheckMessage, Error

from django_statemodes.conf import conf
from django_statemodes.core.registry import load_provider_class
from django_statemodes.exceptions import PROVIDER_HINT, ProviderNotFound

from .common import ENGINE_PREFIX
from .redis import check_redis_provider, is_redis_provider

ENGINE = ENGINE_PREFIX + "custom"


def check_custom() -> list[CheckMessage]:
    """Check that Custom mode's provider loads, then the provider's own options."""
    if settings.SESSION_ENGINE != ENGINE:
        return []
    try:
        provider = load_provider_class(conf.STATEMODES_CUSTOM_PROVIDER)
    except ProviderNotFound as exc:
        return [Error(exc.args[0], hint=PROVIDER_HINT, id="django_statemodes.E007")]
    options = conf.STATEMODES_CUSTOM_PROVIDER_OPTIONS
    errors = check_redis_provider(options) if is_redis_provider(provider) else []
    # Any other provider may check its own options with a check(options) classmethod.
    provider_check = getattr(provider, "check", None)
    if callable(provider_check):
        errors.extend(provider_check(options))
    return errors
