"""The coupons plugin's tables (created by the host migration ``0012_coupons``): all per site."""

from __future__ import annotations

import json

import peewee

from kamengsite.i18n import _l
from kamengsite.models import utcnow
from kamengsite.tenancy import TenantModel

KINDS = ("fixed", "percent")
KIND_LABELS = {"fixed": _l("Money off"), "percent": _l("Percent off")}
BP = 10000  # basis points in 100 %


class Coupon(TenantModel):
    """A code a buyer types at checkout: money off (fixed fen) or a percent off (basis points)."""

    code = peewee.CharField(max_length=32)
    kind = peewee.CharField(max_length=8)
    value = peewee.BigIntegerField()
    max_discount_fen = peewee.BigIntegerField(default=0)
    min_spend_fen = peewee.BigIntegerField(default=0)
    product_ids = peewee.TextField(default="")
    category_ids = peewee.TextField(default="")
    total_limit = peewee.IntegerField(default=0)
    per_member_limit = peewee.IntegerField(default=0)
    used = peewee.IntegerField(default=0)
    starts_at = peewee.DateTimeField(null=True)
    ends_at = peewee.DateTimeField(null=True)
    stackable = peewee.BooleanField(default=False)
    members_only = peewee.BooleanField(default=False)
    active = peewee.BooleanField(default=True)
    note = peewee.CharField(max_length=120, default="")
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "coupons_coupon"
        indexes = ((("site", "code"), True),)

    @property
    def products(self) -> list[int]:
        return _ids(self.product_ids)

    @property
    def categories(self) -> list[int]:
        return _ids(self.category_ids)


class CouponUse(TenantModel):
    coupon = peewee.ForeignKeyField(Coupon, on_delete="CASCADE", backref="+")
    order_id = peewee.IntegerField(unique=True)
    member_id = peewee.IntegerField(null=True)
    contact = peewee.CharField(max_length=120, default="")
    discount_fen = peewee.BigIntegerField(default=0)
    released = peewee.BooleanField(default=False)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "coupons_coupon_use"


class FlashSale(TenantModel):
    """秒杀: one SKU at ``price_fen`` between ``starts_at`` and ``ends_at``, at most ``cap`` units."""

    product_id = peewee.IntegerField()
    sku_id = peewee.IntegerField()
    price_fen = peewee.BigIntegerField()
    cap = peewee.IntegerField()
    sold = peewee.IntegerField(default=0)
    per_member_limit = peewee.IntegerField(default=0)
    starts_at = peewee.DateTimeField()
    ends_at = peewee.DateTimeField()
    active = peewee.BooleanField(default=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "coupons_flash_sale"

    @property
    def remaining(self) -> int:
        return max(0, self.cap - self.sold)


class FlashSaleUse(TenantModel):
    sale = peewee.ForeignKeyField(FlashSale, on_delete="CASCADE", backref="+")
    order_id = peewee.IntegerField(unique=True)
    member_id = peewee.IntegerField(null=True)
    contact = peewee.CharField(max_length=120, default="")
    quantity = peewee.IntegerField()
    released = peewee.BooleanField(default=False)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "coupons_flash_sale_use"


class NewcomerPrice(TenantModel):
    """新人专享: a SKU's price for a signed-in member's first order on this site."""

    sku_id = peewee.IntegerField()
    price_fen = peewee.BigIntegerField()
    active = peewee.BooleanField(default=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "coupons_newcomer_price"
        indexes = ((("site", "sku_id"), True),)


class QuantityTier(TenantModel):
    """批发价: from ``min_qty`` units in one order, each unit costs ``unit_price_fen``."""

    sku_id = peewee.IntegerField()
    min_qty = peewee.IntegerField()
    unit_price_fen = peewee.BigIntegerField()
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "coupons_quantity_tier"
        indexes = ((("site", "sku_id", "min_qty"), True),)


MODELS = (Coupon, CouponUse, FlashSale, FlashSaleUse, NewcomerPrice, QuantityTier)


def _ids(text: str) -> list[int]:
    if not text:
        return []
    return [int(v) for v in json.loads(text)]


def dump_ids(ids) -> str:
    ids = sorted({int(v) for v in ids or ()})
    return json.dumps(ids) if ids else ""
