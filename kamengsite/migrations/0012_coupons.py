"""The coupons plugin's tables: coupon codes and their uses, flash sales and their uses,
new-customer prices and quantity (wholesale) tiers — all per site.

They live with the host's migrations so every instance has them whether or not the plugin
is installed. A use row exists per order that took a coupon or flash-sale units
(``order_id`` unique); ``released`` marks one given back when its order expired.
"""
import datetime

from peewee import BigIntegerField, BooleanField, CharField, DateTimeField, ForeignKeyField, IntegerField, Model, TextField


def up(migrator, db):
    class Site(Model):
        class Meta:
            database = db
            table_name = "site"

    now = datetime.datetime.utcnow

    class Coupon(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        code = CharField(max_length=32)
        kind = CharField(max_length=8)  # fixed | percent
        value = BigIntegerField()  # fen (fixed) or basis points off (percent)
        max_discount_fen = BigIntegerField(default=0)  # percent coupons: 0 = no cap
        min_spend_fen = BigIntegerField(default=0)
        product_ids = TextField(default="")  # JSON list; empty with category_ids: every product
        category_ids = TextField(default="")
        total_limit = IntegerField(default=0)  # 0: unlimited
        per_member_limit = IntegerField(default=0)
        used = IntegerField(default=0)
        starts_at = DateTimeField(null=True)
        ends_at = DateTimeField(null=True)
        stackable = BooleanField(default=False)
        members_only = BooleanField(default=False)
        active = BooleanField(default=True)
        note = CharField(max_length=120, default="")
        created_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "coupons_coupon"
            indexes = ((("site", "code"), True),)

    class CouponUse(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        coupon = ForeignKeyField(Coupon, on_delete="CASCADE", index=True, backref="+")
        order_id = IntegerField(unique=True)
        member_id = IntegerField(null=True, index=True)
        contact = CharField(max_length=120, default="")
        discount_fen = BigIntegerField(default=0)
        released = BooleanField(default=False)
        created_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "coupons_coupon_use"

    class FlashSale(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        product_id = IntegerField()
        sku_id = IntegerField(index=True)
        price_fen = BigIntegerField()
        cap = IntegerField()
        sold = IntegerField(default=0)
        per_member_limit = IntegerField(default=0)
        starts_at = DateTimeField()
        ends_at = DateTimeField()
        active = BooleanField(default=True)
        created_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "coupons_flash_sale"

    class FlashSaleUse(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        sale = ForeignKeyField(FlashSale, on_delete="CASCADE", index=True, backref="+")
        order_id = IntegerField(unique=True)
        member_id = IntegerField(null=True, index=True)
        contact = CharField(max_length=120, default="")
        quantity = IntegerField()
        released = BooleanField(default=False)
        created_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "coupons_flash_sale_use"

    class NewcomerPrice(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        sku_id = IntegerField()
        price_fen = BigIntegerField()
        active = BooleanField(default=True)
        created_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "coupons_newcomer_price"
            indexes = ((("site", "sku_id"), True),)

    class QuantityTier(Model):
        site = ForeignKeyField(Site, on_delete="CASCADE", index=True)
        sku_id = IntegerField()
        min_qty = IntegerField()
        unit_price_fen = BigIntegerField()
        created_at = DateTimeField(default=now)

        class Meta:
            database = db
            table_name = "coupons_quantity_tier"
            indexes = ((("site", "sku_id", "min_qty"), True),)

    db.create_tables([Coupon, CouponUse, FlashSale, FlashSaleUse, NewcomerPrice, QuantityTier])


def down(migrator, db):
    for table in ("coupons_quantity_tier", "coupons_newcomer_price", "coupons_flash_sale_use", "coupons_flash_sale",
                  "coupons_coupon_use", "coupons_coupon"):
        db.execute_sql(f"DROP TABLE {table}")
