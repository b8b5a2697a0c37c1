"""The admin's pages of live sessions, with an action that ends sessions.

- "Live sessions" (``LiveSessionAdmin``): every mode whose store keeps the index of sessions by
  user (InProc, StateServer, SQL, Redis; ``STATEMODES_USER_INDEX``), through
  ``SessionStateProvider.list_sessions``. It shows a key's first characters only.
- "SQL sessions" (``SessionStateAdmin``): SQL mode's table through unmanaged models, as a list
  and its action only (a row's URL would hold its key). It shows the same first characters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db.models import Q, QuerySet, Value
from django.db.models.functions import Coalesce, Length
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext

from django_statemodes import sessions
from django_statemodes.conf import conf
from django_statemodes.items import SessionInfo
from django_statemodes.models import (
    KEY_PREFIX,
    LiveSession,
    SessionState,
    SessionStateApplication,
    shown_key,
)
from django_statemodes.providers.base import ExpiredItem
from django_statemodes.providers.sql import schema


@admin.register(SessionState)
class SessionStateAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """SQL mode's table, rows listed and ended by the action: no page per row.

    A row's admin URL would hold its SessionId (the key and the application's suffix), so the
    admin has the list only (as the live-sessions page), and its checkboxes name rows by a keyed
    digest (``session_reference``) after the prefix the list shows.
    """

    list_display = ("key", "application", "created", "expires", "locked", "lock_age", "size")
    list_display_links = None
    list_filter = ("locked",)
    search_fields = ("session_id__startswith",)
    actions = ["end_sessions"]
    list_per_page = 50

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_changelist"
        return [path("", self.admin_site.admin_view(self.changelist_view), name=name)]

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
        if request.method == "POST" and helpers.ACTION_CHECKBOX_NAME in request.POST:
            # Django's actions select rows by primary key: give them the rows the checkboxes name.
            post = request.POST.copy()
            chosen = post.getlist(helpers.ACTION_CHECKBOX_NAME)
            post.setlist(helpers.ACTION_CHECKBOX_NAME, self._chosen_ids(request, chosen))
            request.POST = post  # type: ignore[assignment]  # the stubs type it read-only
        self._names = self._applications()  # one query per page, not one per row
        return super().changelist_view(request, extra_context)

    def action_checkbox(self, obj: SessionState) -> SafeString:
        # Django's checkbox carries the primary key, the whole SessionId: this one carries the
        # row's reference and the prefix the list shows, which finds it again in one lookup.
        value = f"{sessions.session_reference(obj.session_id)}:{obj.session_id[:KEY_PREFIX]}"
        label = format_html(gettext("Select this object for an action - {}"), str(obj))
        attrs = {"class": "action-select", "aria-label": label}
        checkbox = forms.CheckboxInput(attrs, lambda value: False)  # never ticked beforehand
        return mark_safe(checkbox.render(helpers.ACTION_CHECKBOX_NAME, value))

    def _chosen_ids(self, request: HttpRequest, chosen: list[str]) -> list[str]:
        """The SessionIds of the rows ``chosen`` names (``action_checkbox``'s values).

        Any other value is passed on as it is, to match SessionIds as the values of Django's own
        checkboxes would: a reference whose row is gone matches none (no key holds its colon).
        """
        named = [value.partition(":") for value in chosen]
        among = Q()
        for prefix in {prefix for _, _, prefix in named if prefix}:
            among |= Q(session_id__startswith=prefix)
        found: dict[str, str] = {}
        if among:
            found = {
                sessions.session_reference(session_id): session_id
                for session_id in self.get_queryset(request)
                .filter(among)
                .values_list("session_id", flat=True)
            }
        return [
            found.get(reference, value)
            for value, (reference, _, _) in zip(chosen, named, strict=True)
        ]

    @admin.display(description="session key", ordering="session_id")
    def key(self, obj: SessionState) -> str:
        return shown_key(obj.session_key)

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


def _when(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


@admin.register(LiveSession)
class LiveSessionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Live sessions of every mode, read through the store's index (no table)."""

    list_per_page = 50
    change_list_template = "admin/django_statemodes/livesession/change_list.html"

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_changelist"
        return [path("", self.admin_site.admin_view(self.changelist_view), name=name)]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _page(
        self, request: HttpRequest
    ) -> tuple[list[SessionInfo], int, str | None, int, str | None]:
        """This request's page of sessions: (sessions, total, user filter, page number, error)."""
        user_id = request.GET.get("user") or None
        try:
            number = max(0, int(request.GET.get("p", "0")))
        except ValueError:
            number = 0
        try:
            provider = sessions.provider()
        except ImproperlyConfigured as exc:
            return [], 0, user_id, number, str(exc)
        if user_id is not None and len(user_id) > 255:
            return [], 0, user_id, number, "No such user id."
        infos, total = provider.list_sessions(
            user_id=user_id, offset=number * self.list_per_page, limit=self.list_per_page
        )
        return infos, total, user_id, number, None

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        infos, total, user_id, number, error = self._page(request)
        if request.method == "POST":
            if not self.has_delete_permission(request):
                raise PermissionDenied
            chosen = set(request.POST.getlist("session"))
            ended = sum(
                sessions.end_session(info.session_key)
                for info in infos
                if sessions.session_reference(info.session_key) in chosen
            )
            self.message_user(request, f"Ended {ended} session(s).", messages.SUCCESS)
            return HttpResponseRedirect(request.get_full_path())
        rows = [
            {
                "reference": sessions.session_reference(info.session_key),
                "key": shown_key(info.session_key),
                "user_id": info.user_id,
                "created": _when(info.created),
                "last_seen": _when(info.last_seen),
                "expires": _when(info.expires),
                "locked": info.locked,
                "lock_age": f"{info.lock_age:.1f} s" if info.locked else "-",
                "size": info.size,
                "user_agent": info.user_agent or "",
                "ip": info.ip or "",
            }
            for info in infos
        ]
        pages = max(1, -(-total // self.list_per_page))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Live sessions",
            "rows": rows,
            "total": total,
            "user_filter": user_id or "",
            "page_number": number,
            "previous_page": number - 1 if number > 0 else None,
            "next_page": number + 1 if number + 1 < pages else None,
            "pages": pages,
            "error": error,
            "can_end": self.has_delete_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, self.change_list_template, context)
