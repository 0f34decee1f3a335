"""The distribution (分销) plugin's tables: members' invite codes and the referral bonds.

They live with the host's migrations so every instance has them whether or not the plugin
is installed (empty tables cost nothing, and a plugin installed later needs no extra step).
"""
import datetime

from peewee import CharField, DateTimeField, ForeignKeyField, Model


def up(migrator, db):
    class Site(Model):
        class Meta:
            database = db
            table_name = "site"

    class Member(Model):
        class Meta:
            database = db
            table_name = "member"

    class InviteCode(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        member = ForeignKeyField(Member, unique=True, on_delete="CASCADE", backref="+")  # one code per member
        code = CharField(max_length=16)
        created_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "distribution_invite_code"
            indexes = ((("site", "code"), True),)  # unique per site

    class Referral(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        member = ForeignKeyField(Member, unique=True, on_delete="CASCADE", backref="+")  # one referrer, for good
        referrer = ForeignKeyField(Member, on_delete="CASCADE", index=True, backref="+")
        created_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "distribution_referral"

    db.create_tables([InviteCode, Referral])


def down(migrator, db):
    db.execute_sql("DROP TABLE distribution_referral")
    db.execute_sql("DROP TABLE distribution_invite_code")
