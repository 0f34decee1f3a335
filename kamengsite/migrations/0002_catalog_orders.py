"""Catalogue (categories, products, SKUs), encrypted card keys, orders and payments."""
import datetime

from peewee import (BigIntegerField, BlobField, BooleanField, CharField, DateTimeField, ForeignKeyField,
                    IntegerField, Model, TextField)


def up(migrator, db):
    now = datetime.datetime.utcnow

    class Base(Model):
        class Meta:
            database = db

    class Site(Base):
        class Meta:
            table_name = "site"

    class Category(Base):
        site = ForeignKeyField(Site, on_delete="CASCADE")
        parent = ForeignKeyField("self", null=True, on_delete="SET NULL")
        name = CharField(max_length=60)
        sort = IntegerField(default=0)
        visible = BooleanField(default=True)
        created_at = DateTimeField(default=now)

        class Meta:
            table_name = "category"

    class Product(Base):
        site = ForeignKeyField(Site, on_delete="CASCADE")
        category = ForeignKeyField(Category, null=True, on_delete="SET NULL")
        name = CharField(max_length=120)
        summary = CharField(max_length=255, default="")
        description = TextField(default="")
        kind = CharField(max_length=16, default="card")
        image = CharField(max_length=255, default="")
        members_only = BooleanField(default=False)
        per_buyer_limit = IntegerField(default=0)
        min_qty = IntegerField(default=1)
        max_qty = IntegerField(default=10)
        delivery_order = CharField(max_length=8, default="fifo")
        loop_key = BooleanField(default=False)
        topup_fields = TextField(default="")
        low_stock_threshold = IntegerField(default=0)
        low_stock_alerted = BooleanField(default=False)
        status = CharField(max_length=8, default="on")
        sort = IntegerField(default=0)
        created_at = DateTimeField(default=now)
        updated_at = DateTimeField(default=now)

        class Meta:
            table_name = "product"
            indexes = ((("site", "status", "sort"), False),)

    class Sku(Base):
        product = ForeignKeyField(Product, on_delete="CASCADE")
        name = CharField(max_length=60, default="")
        price_fen = BigIntegerField()
        stock = IntegerField(default=0)
        sold = IntegerField(default=0)
        sort = IntegerField(default=0)
        status = CharField(max_length=8, default="on")

        class Meta:
            table_name = "sku"

    class Order(Base):
        site = ForeignKeyField(Site, on_delete="RESTRICT")
        order_no = CharField(max_length=32, unique=True)
        product = ForeignKeyField(Product, on_delete="RESTRICT")
        sku = ForeignKeyField(Sku, on_delete="RESTRICT")
        quantity = IntegerField()
        unit_price_fen = BigIntegerField()
        amount_fen = BigIntegerField()
        status = CharField(max_length=16, default="created")
        contact = CharField(max_length=120, default="")
        query_hash = CharField(max_length=255, default="")
        member_id = IntegerField(null=True)
        channel = CharField(max_length=32, default="")
        channel_profile = CharField(max_length=32, default="")
        buyer_ip = CharField(max_length=45, default="")
        fields = TextField(default="")
        note = TextField(default="")
        expires_at = DateTimeField()
        paid_at = DateTimeField(null=True)
        delivered_at = DateTimeField(null=True)
        created_at = DateTimeField(default=now)
        updated_at = DateTimeField(default=now)

        class Meta:
            table_name = "shop_order"
            indexes = (
                (("site", "created_at"), False),
                (("status", "expires_at"), False),
                (("site", "contact"), False),
            )

    class CardKey(Base):
        sku = ForeignKeyField(Sku, on_delete="CASCADE")
        sealed = BlobField()
        digest = CharField(max_length=64)
        status = CharField(max_length=12, default="available")
        order = ForeignKeyField(Order, null=True, on_delete="SET NULL")
        batch = CharField(max_length=32, default="")
        created_at = DateTimeField(default=now)
        sold_at = DateTimeField(null=True)

        class Meta:
            table_name = "card_key"
            indexes = (
                (("sku", "digest"), True),
                (("sku", "status", "id"), False),
            )

    class Payment(Base):
        order = ForeignKeyField(Order, on_delete="RESTRICT")
        channel = CharField(max_length=32)
        trade_no = CharField(max_length=64)
        amount_fen = BigIntegerField()
        state = CharField(max_length=16, default="applied")
        created_at = DateTimeField(default=now)

        class Meta:
            table_name = "payment"
            indexes = ((("channel", "trade_no"), True),)

    db.create_tables([Category, Product, Sku, Order, CardKey, Payment])


def down(migrator, db):
    for table in ("payment", "card_key", "shop_order", "sku", "product", "category"):
        db.execute_sql(f"DROP TABLE {table}")
