"""The admin's read-only list of live SQL-mode sessions, with an action that ends sessions."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet, Value
from django.db.models.functions import Coalesce, Length
from django.http import HttpRequest
from django.utils import timezone

from django_statemodes.conf import conf
from django_statemodes.models import SessionState, SessionStateApplication
from django_statemodes.providers.base import ExpiredItem
from django_statemodes.providers.sql import schema


@admin.register(SessionState)
class SessionStateAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("key", "application", "created", "expires", "locked", "lock_age", "size")
    list_filter = ("locked",)
    search_fields = ("session_id__startswith",)
    actions = ["end_sessions"]
    exclude = ("item_short", "item_long")
    readonly_fields = ("key", "application", "created", "expires", "locked", "lock_age", "size")
    list_per_page = 50

    def get_queryset(self, request: HttpRequest) -> QuerySet[SessionState]:
        # Live sessions only: an expired row that was not purged yet is never served either.
        rows: QuerySet[SessionState] = super().get_queryset(request)
        return (
            rows.using(conf.STATEMODES_SQL_DATABASE)
            .filter(expires__gt=timezone.now())
            .defer("item_short", "item_long")
            .annotate(size=Coalesce(Length("item_short"), Length("item_long"), Value(0)))
        )

    def _applications(self) -> dict[str, str]:
        rows = SessionStateApplication.objects.using(conf.STATEMODES_SQL_DATABASE)
        return {schema.app_suffix(row.app_id): str(row) for row in rows}

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        self._names = self._applications()  # one query per page, not one per row
        return super().changelist_view(request, extra_context)

    @admin.display(description="session key", ordering="session_id")
    def key(self, obj: SessionState) -> str:
        return obj.session_key

    @admin.display(description="application")
    def application(self, obj: SessionState) -> str:
        names = getattr(self, "_names", None) or self._applications()
        return names.get(obj.app_suffix, obj.app_suffix)

    @admin.display(description="lock age")
    def lock_age(self, obj: SessionState) -> str:
        if not obj.locked:
            return "-"
        return f"{(timezone.now() - obj.lock_date).total_seconds():.1f} s"

    @admin.display(description="size (bytes)", ordering="size")
    def size(self, obj: SessionState) -> int:
        return int(getattr(obj, "size", 0))

    @admin.action(description="End the selected sessions (Session.Abandon)", permissions=["end"])
    def end_sessions(self, request: HttpRequest, queryset: QuerySet[SessionState]) -> None:
        from django_statemodes.backends.sql import SessionStore
        from django_statemodes.providers.sql import provider_for

        provider = provider_for(conf.STATEMODES_SQL_DATABASE)
        ended = 0
        try:
            for row in queryset.defer(None):
                if row.app_suffix != provider.suffix:
                    ended += queryset.filter(pk=row.pk).delete()[0]  # another application's
                    continue
                if provider.remove(row.session_key):
                    ended += 1
                    # Like an abandoned session: session_end receives its data.
                    item = ExpiredItem(row.session_key, row.payload)
                    SessionStore._expired(item, reason="abandoned")
        finally:
            provider.close()
        self.message_user(request, f"Ended {ended} session(s).", messages.SUCCESS)

    def has_end_permission(self, request: HttpRequest) -> bool:
        """Who may end sessions: whoever Django would let delete the rows."""
        return super().has_delete_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Rows end through the provider (waking waiters, sending session_end), never the ORM:
        # this also drops Django's delete_selected action and the delete view.
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
