"""The group-buy (拼团) plugin's tables: offers, groups and their members.

``groupbuy_offer``: a product's group price (SKU, group size, price, how long a started group
stays open, the offer's own dates). ``groupbuy_group``: one started group, its size copied from
the offer (open → filled or failed, never both: every change is a conditional update on ``status = 'open'``).
``groupbuy_member``: one order's place in a group (unique per order); ``seated`` marks the
members whose payments filled the group. Like every plugin table they live with the host's
migrations, so an instance has them whether or not the plugin is installed.
"""
import datetime

from peewee import (BigIntegerField, BooleanField, CharField, DateTimeField, ForeignKeyField, IntegerField, Model)


def up(migrator, db):
    class Site(Model):
        class Meta:
            database = db
            table_name = "site"

    class Product(Model):
        class Meta:
            database = db
            table_name = "product"

    class Sku(Model):
        class Meta:
            database = db
            table_name = "sku"

    class Order(Model):
        class Meta:
            database = db
            table_name = "shop_order"

    class GroupOffer(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        product = ForeignKeyField(Product, on_delete="CASCADE", index=True, backref="+")
        sku = ForeignKeyField(Sku, on_delete="CASCADE", backref="+")
        group_size = IntegerField()
        group_price_fen = BigIntegerField()
        window_minutes = IntegerField()
        starts_at = DateTimeField(null=True)
        ends_at = DateTimeField(null=True)
        active = BooleanField(default=True)
        created_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "groupbuy_offer"

    class Group(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        offer = ForeignKeyField(GroupOffer, on_delete="RESTRICT", index=True, backref="+")
        leader_member_id = IntegerField(null=True)
        leader_contact = CharField(max_length=120, default="")
        group_size = IntegerField()  # the offer's, copied when the group starts
        status = CharField(max_length=8, default="open", index=True)
        opened_at = DateTimeField(default=datetime.datetime.utcnow)
        closes_at = DateTimeField(index=True)
        filled_at = DateTimeField(null=True)
        failed_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "groupbuy_group"

    class GroupMember(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        group = ForeignKeyField(Group, on_delete="RESTRICT", index=True, backref="+")
        order = ForeignKeyField(Order, unique=True, on_delete="RESTRICT", backref="+")
        member_id = IntegerField(null=True)
        contact = CharField(max_length=120, default="")
        seated = BooleanField(default=False)
        joined_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "groupbuy_member"

    db.create_tables([GroupOffer, Group, GroupMember])


def down(migrator, db):
    db.execute_sql("DROP TABLE groupbuy_member")
    db.execute_sql("DROP TABLE groupbuy_group")
    db.execute_sql("DROP TABLE groupbuy_offer")
