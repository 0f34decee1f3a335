"""The crm plugin's rows (tables made by the host's migration ``0017_crm``) and its settings schema.

Every row is a tenant row: queries run inside ``acting_for(site_id)`` (or a site request)
and never see another site's members, tags, campaigns or messages.
"""

from __future__ import annotations

import peewee

from kamengsite.i18n import _l
from kamengsite.members import Member
from kamengsite.models import utcnow
from kamengsite.tenancy import TenantModel

#: The segments, in the order the console lists them, with their labels.
SEGMENTS = {
    "high_value": _l("High value"),
    "potential": _l("Potential"),
    "dormant": _l("Dormant"),
    "new": _l("New members"),
}

SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {
        "window_days": {"type": "integer", "minimum": 1, "maximum": 3650, "default": 90,
                        "title": _l("Window (days): order count and spending are counted over this many recent days")},
        "high_value_spend_fen": {"type": "integer", "minimum": 1, "maximum": 10**11, "default": 50000,
                                 "title": _l("High value: spending within the window of at least (fen; 50000 = ¥500)")},
        "high_value_min_orders": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 1,
                                  "title": _l("High value: at least this many orders within the window")},
        "potential_max_orders": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 1,
                                 "title": _l("Potential: at most this many paid orders in total")},
        "potential_recent_days": {"type": "integer", "minimum": 1, "maximum": 3650, "default": 30,
                                  "title": _l("Potential: last purchase within this many days")},
        "dormant_days": {"type": "integer", "minimum": 1, "maximum": 3650, "default": 60,
                         "title": _l("Dormant: has bought before, but nothing for this many days")},
        "new_days": {"type": "integer", "minimum": 1, "maximum": 3650, "default": 30,
                     "title": _l("New members: signed up within this many days, no paid order yet")},
        "utc_offset_hours": {"type": "integer", "minimum": -12, "maximum": 14, "default": 8,
                             "title": _l("Time zone of date campaigns (birthday, a given date), as a UTC offset in hours (Beijing time is 8)")},
    },
    "additionalProperties": False,
}


class MemberSegment(TenantModel):
    """``member`` is in ``segment`` since ``entered_at``; the row goes when they leave it."""

    member = peewee.ForeignKeyField(Member, on_delete="CASCADE", index=True, backref="+")
    segment = peewee.CharField(max_length=32)
    entered_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "crm_member_segment"
        indexes = ((("site", "segment", "member"), True),)


class Tag(TenantModel):
    name = peewee.CharField(max_length=32)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "crm_tag"
        indexes = ((("site", "name"), True),)


class MemberTag(TenantModel):
    tag = peewee.ForeignKeyField(Tag, on_delete="CASCADE", backref="+")
    member = peewee.ForeignKeyField(Member, on_delete="CASCADE", index=True, backref="+")
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "crm_member_tag"
        indexes = ((("tag", "member"), True),)


class MemberProfile(TenantModel):
    member = peewee.ForeignKeyField(Member, unique=True, on_delete="CASCADE", backref="+")
    birthday = peewee.DateField(null=True)
    birth_md = peewee.IntegerField(null=True)  # month * 100 + day, for the birthday lookup
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "crm_member_profile"
        indexes = ((("site", "birth_md"), False),)


class Campaign(TenantModel):
    name = peewee.CharField(max_length=60)
    fires_on = peewee.CharField(max_length=48)  # segment:<name> | tag:<name> | date:birthday | date:YYYY-MM-DD
    subject = peewee.CharField(max_length=120)
    body = peewee.TextField(default="")
    send_email = peewee.BooleanField(default=True)
    send_inbox = peewee.BooleanField(default=True)
    active = peewee.BooleanField(default=False)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "crm_campaign"


class CampaignDelivery(TenantModel):
    """One campaign reached one member on one occasion (0: once ever; the year of a birthday)."""

    campaign = peewee.ForeignKeyField(Campaign, on_delete="CASCADE", backref="+")
    member = peewee.ForeignKeyField(Member, on_delete="CASCADE", index=True, backref="+")
    occasion = peewee.IntegerField(default=0)
    created_at = peewee.DateTimeField(default=utcnow)
    email_status = peewee.CharField(max_length=16, default="")  # "" | sending | sent | failed | skipped | gave_up
    email_attempts = peewee.IntegerField(default=0)
    email_error = peewee.CharField(max_length=255, default="")
    email_claimed_at = peewee.DateTimeField(null=True)
    sent_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "crm_campaign_delivery"
        indexes = ((("campaign", "member", "occasion"), True), (("site", "email_status"), False))


class Message(TenantModel):
    """An in-site message in a member's inbox (``/member/messages``)."""

    member = peewee.ForeignKeyField(Member, on_delete="CASCADE", index=True, backref="+")
    campaign = peewee.ForeignKeyField(Campaign, null=True, on_delete="SET NULL", backref="+")
    subject = peewee.CharField(max_length=120)
    body = peewee.TextField(default="")
    created_at = peewee.DateTimeField(default=utcnow)
    read_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "crm_message"
