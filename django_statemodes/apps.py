from __future__ import annotations

from django.apps import AppConfig
from django.core.checks import Tags, register


class StateModesConfig(AppConfig):
    name = "django_statemodes"
    verbose_name = "Session state modes"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from django_statemodes.checks import check_settings

        register(Tags.compatibility)(check_settings)
