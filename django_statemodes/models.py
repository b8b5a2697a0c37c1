"""Read-only models over SQL mode's tables, for the admin (``managed = False``: no migrations).

The tables belong to ``manage.py installsqlstate``; these models only read them, through the
``STATEMODES_SQL_DATABASE`` alias. ``LiveSession`` has no table at all: it gives the admin its
page of live sessions in every mode.
"""

from __future__ import annotations

from django.db import models

from django_statemodes.providers.sql import schema

#: How many characters of a session key the admin shows: enough to tell sessions apart, far too
#: few to use one.
KEY_PREFIX = 8


def shown_key(session_key: str) -> str:
    """What a page may show of ``session_key``: its first characters, never the whole key."""
    return session_key[:KEY_PREFIX] + "\u2026"


class SessionState(models.Model):
    """A row of ``ASPStateTempSessions``."""

    session_id = models.CharField(
        "SessionId", max_length=88, primary_key=True, db_column="SessionId"
    )
    created = models.DateTimeField(db_column="Created")
    expires = models.DateTimeField(db_column="Expires")
    lock_date = models.DateTimeField(db_column="LockDate")
    lock_cookie = models.IntegerField(db_column="LockCookie")
    timeout = models.IntegerField(help_text="Seconds of sliding expiry.", db_column="Timeout")
    locked = models.BooleanField(db_column="Locked")
    item_short = models.BinaryField(null=True, db_column="SessionItemShort")
    item_long = models.BinaryField(null=True, db_column="SessionItemLong")
    flags = models.IntegerField(db_column="Flags")

    class Meta:
        managed = False
        db_table = schema.SESSIONS
        verbose_name = "SQL session"
        ordering = ["-expires"]

    def __str__(self) -> str:
        # The admin writes this into its pages (the checkboxes' labels): a prefix, never the key.
        return shown_key(self.session_key)

    @property
    def session_key(self) -> str:
        """The Django session key: the SessionId without ASP.NET's 8-hex application suffix."""
        return self.session_id[:-8]

    @property
    def app_suffix(self) -> str:
        return self.session_id[-8:]

    @property
    def payload(self) -> bytes | None:
        data = self.item_short if self.item_short is not None else self.item_long
        return None if data is None else bytes(data)


class SessionStateApplication(models.Model):
    """A row of ``ASPStateTempApplications``."""

    app_id = models.IntegerField(primary_key=True, db_column="AppId")
    app_name = models.CharField(max_length=280, db_column="AppName")

    class Meta:
        managed = False
        db_table = schema.APPLICATIONS
        verbose_name = "SQL session application"

    def __str__(self) -> str:
        return self.app_name.rstrip()


class LiveSession(models.Model):
    """No table: the admin's page of live sessions in every mode (``admin.LiveSessionAdmin``).

    Its rows come from the store through ``SessionStateProvider.list_sessions``; the model only
    gives the admin a page and its permissions ("view live session", "delete live session").
    """

    class Meta:
        managed = False
        db_table = "statemodes_live_session_has_no_table"
        verbose_name = "live session"
        default_permissions = ("view", "delete")

    def __str__(self) -> str:
        return "live session"
