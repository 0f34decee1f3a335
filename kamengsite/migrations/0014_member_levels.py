"""The member levels (会员等级) plugin's table, and an index of orders by buyer.

``member_levels_member``: one row per member of a site that the plugin has seen — the level an
owner granted (``granted_level``, "" when the level follows the member's spend), and a cache of
the member's cumulative paid spend and level (the plugin recomputes both from ``shop_order``).
The index on ``shop_order (site_id, member_id)`` serves the spend sum and the
recommendations plugin's "bought together" join.
"""
import datetime

from peewee import BigIntegerField, CharField, DateTimeField, ForeignKeyField, Model

ORDER_INDEX = "member_levels_order_member"


def up(migrator, db):
    class Site(Model):
        class Meta:
            database = db
            table_name = "site"

    class Member(Model):
        class Meta:
            database = db
            table_name = "member"

    class MemberLevel(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        member = ForeignKeyField(Member, unique=True, on_delete="CASCADE", backref="+")
        level = CharField(max_length=40, default="")  # the level at the last refresh ("" = none)
        granted_level = CharField(max_length=40, default="")  # set by the owner; "" = follows spend
        spend_fen = BigIntegerField(default=0)  # cumulative paid spend at the last refresh
        updated_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "member_levels_member"

    db.create_tables([MemberLevel])
    db.execute_sql(f"CREATE INDEX {ORDER_INDEX} ON shop_order (site_id, member_id)")


def down(migrator, db):
    migrator.migrate(migrator.drop_index("shop_order", ORDER_INDEX))
    db.execute_sql("DROP TABLE member_levels_member")
