"""Upstream suppliers (docking, plugins/kamengsite-upstreams): the upstreams, the links of local SKUs to
upstream items, and the forwarding of paid orders.

``upstream``: one docked supplier (protocol, JSON settings with its secrets sealed, its health:
failures, back-off, last error). ``upstream_link``: a local SKU (unique) supplied by an upstream
item (``ref``), its repricing rule, the last cost and stock seen, an optional fallback supplier and
a pending price alert. ``upstream_forward``: one paid order forwarded upstream (unique per order),
written by the forwarding code. Like every plugin table they live with the host's migrations.
"""
import datetime

from peewee import (BigIntegerField, BooleanField, CharField, DateTimeField, ForeignKeyField, IntegerField, Model,
                    TextField)


def up(migrator, db):
    now = datetime.datetime.utcnow

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

    class Upstream(Model):
        name = CharField(max_length=60)
        protocol = CharField(max_length=32)
        settings = TextField(default="{}")
        status = CharField(max_length=12, default="active")
        failures = IntegerField(default=0)
        backoff_until = DateTimeField(null=True)
        last_error = TextField(default="")
        last_sync_at = DateTimeField(null=True)
        last_ok_at = DateTimeField(null=True)
        created_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "upstream"

    class UpstreamLink(Model):
        sku = ForeignKeyField(Sku, unique=True, on_delete="CASCADE", backref="+")
        product = ForeignKeyField(Product, on_delete="CASCADE", index=True, backref="+")
        upstream = ForeignKeyField(Upstream, on_delete="RESTRICT", index=True, backref="+")
        ref = CharField(max_length=64)
        fallback_upstream = ForeignKeyField(Upstream, null=True, on_delete="SET NULL", index=True, backref="+")
        fallback_ref = CharField(max_length=64, default="")
        rule = CharField(max_length=8, default="margin")
        rule_value = IntegerField(default=0)
        cost_fen = BigIntegerField(default=0)
        upstream_stock = IntegerField(default=0)
        via_fallback = BooleanField(default=False)
        price_alert = TextField(default="")
        synced_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "upstream_link"

    class UpstreamForward(Model):
        order = ForeignKeyField(Order, unique=True, on_delete="RESTRICT", backref="+")
        site_id = IntegerField(index=True)
        link = ForeignKeyField(UpstreamLink, on_delete="RESTRICT", index=True, backref="+")
        upstream = ForeignKeyField(Upstream, null=True, on_delete="SET NULL", index=True, backref="+")
        state = CharField(max_length=12, default="pending", index=True)
        attempts = IntegerField(default=0)
        next_at = DateTimeField(default=now, index=True)
        upstream_order_no = CharField(max_length=64, default="")
        last_error = TextField(default="")
        created_at = DateTimeField(default=now)
        updated_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "upstream_forward"

    db.create_tables([Upstream, UpstreamLink, UpstreamForward])


def down(migrator, db):
    for table in ("upstream_forward", "upstream_link", "upstream"):
        db.execute_sql(f"DROP TABLE IF EXISTS {table}")
