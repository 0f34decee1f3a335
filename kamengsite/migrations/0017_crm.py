"""The crm (会员营销) plugin's tables: segments, tags, member profiles, campaigns, deliveries, in-site messages.

``crm_member_segment``: the segments a member is in now (a new row = the member entered it);
``crm_tag`` / ``crm_member_tag``: the owner's own tags; ``crm_member_profile``: the birthday a
member gives; ``crm_campaign``: what fires on a segment or a date; ``crm_campaign_delivery``:
one row per (campaign, member, occasion) — the unique key that makes "at most once" hold
across workers; ``crm_message``: the in-site inbox. All of them are per site.
"""
import datetime

from peewee import (BooleanField, CharField, DateField, DateTimeField, ForeignKeyField, IntegerField, Model,
                    TextField)


def up(migrator, db):
    class Site(Model):
        class Meta:
            database = db
            table_name = "site"

    class Member(Model):
        class Meta:
            database = db
            table_name = "member"

    class MemberSegment(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        member = ForeignKeyField(Member, on_delete="CASCADE", index=True, backref="+")
        segment = CharField(max_length=32)
        entered_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "crm_member_segment"
            indexes = ((("site", "segment", "member"), True),)

    class Tag(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        name = CharField(max_length=32)
        created_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "crm_tag"
            indexes = ((("site", "name"), True),)

    class MemberTag(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        tag = ForeignKeyField(Tag, on_delete="CASCADE", backref="+")
        member = ForeignKeyField(Member, on_delete="CASCADE", index=True, backref="+")
        created_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "crm_member_tag"
            indexes = ((("tag", "member"), True),)

    class MemberProfile(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        member = ForeignKeyField(Member, unique=True, on_delete="CASCADE", backref="+")
        birthday = DateField(null=True)
        birth_md = IntegerField(null=True)  # month * 100 + day: the day's lookup, the same on every database
        updated_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "crm_member_profile"
            indexes = ((("site", "birth_md"), False),)

    class Campaign(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        name = CharField(max_length=60)
        fires_on = CharField(max_length=48)  # segment:<name> | tag:<name> | date:birthday | date:YYYY-MM-DD
        subject = CharField(max_length=120)
        body = TextField(default="")
        send_email = BooleanField(default=True)
        send_inbox = BooleanField(default=True)
        active = BooleanField(default=False)
        created_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "crm_campaign"

    class CampaignDelivery(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        campaign = ForeignKeyField(Campaign, on_delete="CASCADE", backref="+")
        member = ForeignKeyField(Member, on_delete="CASCADE", index=True, backref="+")
        occasion = IntegerField(default=0)  # 0: once ever; the year for a birthday
        created_at = DateTimeField(default=datetime.datetime.utcnow)
        email_status = CharField(max_length=16, default="")  # "" | sending | sent | failed | skipped | gave_up
        email_attempts = IntegerField(default=0)
        email_error = CharField(max_length=255, default="")
        email_claimed_at = DateTimeField(null=True)
        sent_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "crm_campaign_delivery"
            indexes = ((("campaign", "member", "occasion"), True), (("site", "email_status"), False))

    class Message(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        member = ForeignKeyField(Member, on_delete="CASCADE", index=True, backref="+")
        campaign = ForeignKeyField(Campaign, null=True, on_delete="SET NULL", backref="+")
        subject = CharField(max_length=120)
        body = TextField(default="")
        created_at = DateTimeField(default=datetime.datetime.utcnow)
        read_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "crm_message"

    db.create_tables([MemberSegment, Tag, MemberTag, MemberProfile, Campaign, CampaignDelivery, Message])


def down(migrator, db):
    for table in ("crm_message", "crm_campaign_delivery", "crm_campaign", "crm_member_profile", "crm_member_tag",
                  "crm_tag", "crm_member_segment"):
        db.execute_sql(f"DROP TABLE {table}")
