"""Route Django's ``db`` session engine to the database the harness is measuring."""

from __future__ import annotations

from typing import Any

from django.conf import settings


class SessionRouter:
    """Send ``django.contrib.sessions`` to ``settings.STATEMODES_BENCH_SESSION_DB``."""

    def _alias(self, model: Any) -> str | None:
        if model._meta.app_label == "sessions":
            alias: str = getattr(settings, "STATEMODES_BENCH_SESSION_DB", "default")
            return alias
        return None

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return self._alias(model)

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return self._alias(model)

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return True
